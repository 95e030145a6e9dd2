"""The demo end to end on the built-in sample (one epoch: the path, not the accuracy)."""

from __future__ import annotations

from pathlib import Path

import rasterio
from click.testing import CliRunner

from stfusion.cli import cli


def test_demo_writes_prediction_table_and_quicklook(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out / "prediction_mlffgan.tif") as src:
        assert src.crs is not None and src.count == 6 and src.shape == (250, 250)
    table = (out / "run" / "test" / "metrics.md").read_text()
    for method in ("mlffgan", "coarse-delta", "persistence"):
        assert method in table
    assert (out / "quicklook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(cli, ["demo", "--out", str(out), "--epochs", "1"])
    assert again.exit_code == 2 and "--overwrite" in again.output

"""The demo end to end on the built-in sample (one epoch: the path, not the accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from stfusion.checkpoint import load as load_checkpoint
from stfusion.cli import cli
from stfusion.sample import DATASETS


def test_demo_writes_the_leave_out_table_of_the_sample_and_names_the_winner(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "benchmark.json").read_text())
    table = (out / "benchmark.md").read_text()
    for method in ("persistence", "coarse-delta", "starfm", "fsdaf", "estarfm", "mlffgan"):
        assert f"| {method} |" in table
    assert "best mean RMSE over 7 case(s):" in result.output  # 6 ordered date pairs + 1 two-pair case
    assert scores  # written as JSON
    # MLFF-GAN learned only from the other bundled datasets: never the sample's files
    model = load_checkpoint(out / "models" / "without-cia-crop" / "best.ckpt")
    seen = model.training_files()
    assert seen and not seen & {p.name for p in DATASETS["cia-crop"].glob("*.tif")}
    assert (out / "quicklook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(cli, ["demo", "--out", str(out), "--epochs", "1"])
    assert again.exit_code == 2 and "--overwrite" in again.output

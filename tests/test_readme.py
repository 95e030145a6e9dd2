"""The README's tutorial, run as written (a user's first ten minutes): every command must succeed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tutorial_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash tutorial\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "the README has one tutorial block"
    commands = []
    for line in blocks[0].splitlines():
        command = line.split("  #")[0].strip()
        if command:
            commands.append(command)
    return commands


@pytest.mark.slow
def test_the_readme_tutorial_runs_as_written(tmp_path: Path) -> None:
    commands = tutorial_commands()
    assert commands[0] == "source .venv/bin/activate"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = {}
    for command in commands[1:]:
        # the one change: training is shortened (the tutorial's 60 epochs take minutes)
        shortened = re.sub(r"--epochs \d+", "--epochs 1", command)
        done = subprocess.run(
            ["bash", "-c", shortened], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs[command.split()[1]] = done.stdout
    assert "best mean RMSE" in outputs["compare"]  # the reader learns which method won
    assert (tmp_path / "my-series" / "fused_20010711.tif").exists()
    assert (tmp_path / "my-series" / "series.csv").exists() and (
        tmp_path / "my-series" / "series.png"
    ).exists()
    assert "rmse" in outputs["evaluate"]
    assert (tmp_path / "my-run" / "best.ckpt").exists() and (
        tmp_path / "my-run" / "test" / "metrics.md"
    ).exists()
    # the README's Python example, on the tutorial's my-data/
    example = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    assert len(example) == 1
    check = "\nassert july.prediction.shape == (3, 400, 400)\nassert prediction.shape == (3, 400, 400)\n"
    check += "import numpy\nnumpy.testing.assert_allclose(same, prediction, rtol=0, atol=1e-6)\n"
    done = subprocess.run(
        [sys.executable, "-c", example[0] + check],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr

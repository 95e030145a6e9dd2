"""Progress bars: shown for long commands on a terminal, never in redirected output or with -q."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from stfusion.sample import DATASETS
from tests.conftest import make_pair_folder

STFUSION = [sys.executable, "-m", "stfusion"]


def on_terminal(args: list[str], cwd: Path) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal; everything it printed."""
    main, child = pty.openpty()
    # a terminal of 24 x 100 characters (a new pseudo-terminal has 0 columns, where tqdm draws no bar)
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, cwd=cwd)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def redirected(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def has_bar(text: str, label: str) -> bool:
    """A tqdm bar line: its label followed by a percentage and a bar."""
    return any(label in line and "%|" in line for line in text.replace("\r", "\n").splitlines())


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CIA crop without its 2001-10-17 fine image (a date to fuse), and a tiny paper-layout folder."""
    root = tmp_path_factory.mktemp("progress")
    flat = root / "flat"
    flat.mkdir()
    for source in sorted(DATASETS["cia-crop"].glob("*.tif")):
        if source.name != "fine_20011017.tif":
            (flat / source.name).symlink_to(source)
    rng = np.random.default_rng(0)
    paper = root / "paper"
    make_pair_folder(paper / "train", "2001_281_1008-2001_290_1017", rng, height=40, width=48)
    make_pair_folder(paper / "val", "2001_290_1017-2001_281_1008", rng, height=40, width=48)
    make_pair_folder(paper / "test", "2001_290_1017-2001_306_1102", rng, height=40, width=48)
    return {"flat": flat, "paper": paper, "root": root}


def commands(folders: dict[str, Path], out: str) -> dict[str, tuple[list[str], str]]:
    flat = folders["flat"]
    return {
        "predict": (
            [
                "predict",
                "--method",
                "starfm",
                "--fine-t1",
                str(flat / "fine_20011008.tif"),
                "--coarse-t1",
                str(flat / "coarse_20011008.tif"),
                "--coarse-t2",
                str(flat / "coarse_20011017.tif"),
                "--out",
                f"{out}-predict.tif",
            ],
            "starfm",
        ),
        "compare": (
            ["compare", str(flat), "--out", f"{out}-compare", "--methods", "coarse-delta"],
            "compare",
        ),
        "fuse": (["fuse", str(flat), "--out", f"{out}-fuse", "--method", "coarse-delta"], "fuse"),
        "train": (
            [
                "train",
                str(folders["paper"]),
                "--save-dir",
                f"{out}-train",
                "--epochs",
                "1",
                "--patch-size",
                "32",
                "--random-crops",
                "1",
                "--coarse-factor",
                "1",
                "--batch-size",
                "2",
            ],
            "training",
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["predict", "compare", "fuse", "train"])
def test_progress_on_a_terminal_only(folders: dict[str, Path], name: str) -> None:
    cwd = folders["root"]
    (tty, label), (pipe, _), (quiet, _) = (
        commands(folders, f"{way}-{name}")[name] for way in ("tty", "pipe", "quiet")
    )
    # the three runs write to different outputs: run side by side
    with ThreadPoolExecutor(max_workers=3) as pool:
        on_tty = pool.submit(on_terminal, [*STFUSION, *tty], cwd)
        on_pipe = pool.submit(redirected, [*STFUSION, *pipe], cwd)
        on_tty_quiet = pool.submit(on_terminal, [*STFUSION, "-q", *quiet], cwd)
        assert has_bar(on_tty.result(), label)
        assert not has_bar(on_pipe.result(), label)
        assert not has_bar(on_tty_quiet.result(), label)

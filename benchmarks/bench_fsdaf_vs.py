"""FSDAF side by side: this tree's fsdaf() against another tree's (e.g. commit 8d77b7c) on the same arrays.

    git worktree add /tmp/old 8d77b7c
    .venv/bin/python benchmarks/bench_fsdaf_vs.py 2040x1720 2 30 /tmp/old/src

Arguments: scene HxW, runs (each tree alternately, fresh processes, 2 threads), block size in coarse
cells (both trees), the other tree's src/. Prints one JSON line per run (fusion call only: wall seconds,
Mpx/s) and the largest difference between the two trees' predictions (a benchmark: it asserts nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def child(src: str, scene: str, out: str, block: int) -> None:
    """One tree's fsdaf() on the saved scene; prints its timing, saves its prediction."""
    sys.path.insert(0, src)
    from stfusion.baselines.fsdaf import fsdaf

    data = np.load(scene)
    c1, f1, c2 = data["c1"], data["f1"], data["c2"]
    start = time.perf_counter()
    prediction = fsdaf(c1, f1, c2, scale_factor=16, block_size=block)
    wall = time.perf_counter() - start
    np.save(out, prediction)
    h, w = f1.shape[1:]
    print(json.dumps({"src": src, "wall_s": round(wall, 2), "mpx_s": round(h * w / 1e6 / wall, 3)}))


def main() -> None:
    size, runs, block, other = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    sys.path.insert(0, str(HERE))
    from bench_fsdaf import synthetic_scene

    h, w = map(int, size.split("x"))
    c1, f1, c2 = synthetic_scene(h, w)[:3]
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    scene = scratch / f"fsdaf-vs-{size}.npz"
    np.savez(scene, c1=c1, f1=f1, c2=c2)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2"}
    trees = (("other", other), ("this", str(HERE.parent / "src")))
    for _ in range(runs):
        for name, src in trees:
            out = str(scratch / f"fsdaf-vs-{name}.npy")
            command = [sys.executable, __file__, "child", src, str(scene), out, block]
            subprocess.run(command, check=True, env=env)
    a, b = (np.load(scratch / f"fsdaf-vs-{name}.npy") for name, _ in trees)
    same_nan = bool((np.isnan(a) == np.isnan(b)).all())
    print(json.dumps({"max_abs_diff": float(np.nanmax(np.abs(a - b))), "nan_equal": same_nan}))


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()

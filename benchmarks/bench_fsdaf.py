"""FSDAF speed and memory benchmark (not a test): prints one JSON line per case.

Each case runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own; wall time is the
fusion call only (the process's start, imports and scene generation are not in it).

    .venv/bin/python benchmarks/bench_fsdaf.py                  # 608x595 and 2040x1720, 6 bands
    .venv/bin/python benchmarks/bench_fsdaf.py --case 2040x1720 # one case, in this process
    .venv/bin/python benchmarks/bench_fsdaf.py --stream 4000x4000 --strips 2
        # prepare() on a scene generated block by block (never in memory), then the first strips

The scene is synthetic: patchy classes, class-specific and smooth changes, coarse = 16 x 16 block
means (scale_factor 16), float32 reflectance. ``--save PATH`` writes the prediction (.npy) to compare
implementations. Large scenes from GeoTIFFs are streamed by ``stfusion predict``, not here.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

SCALE = 16
BANDS = 6
CASES = ("608x595", "2040x1720")


def block_mean(image: np.ndarray) -> np.ndarray:
    """Mean of each SCALE x SCALE cell from pixel (0, 0) (partial cells too), replicated."""
    h, w = image.shape[-2:]
    nr, nc = -(-h // SCALE), -(-w // SCALE)
    pad = [(0, 0)] * (image.ndim - 2) + [(0, nr * SCALE - h), (0, nc * SCALE - w)]

    def cell_sum(values: np.ndarray) -> np.ndarray:
        padded = np.pad(values, pad[-values.ndim :])
        return np.asarray(padded.reshape(*padded.shape[:-2], nr, SCALE, nc, SCALE).sum(axis=(-3, -1)))

    cells = cell_sum(image) / cell_sum(np.ones((h, w)))
    return np.repeat(np.repeat(cells, SCALE, axis=-2), SCALE, axis=-1)[..., :h, :w]


def synthetic_scene(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(coarse t1, fine t1, coarse t2, fine t2), (6, h, w) float32 (same scene as commit 8d77b7c)."""
    from scipy.ndimage import gaussian_filter, zoom

    rng = np.random.default_rng(seed)
    field = zoom(rng.normal(size=(h // 32 + 2, w // 32 + 2)), 32, order=1)[:h, :w]
    labels = np.digitize(field, [-0.8, -0.2, 0.4, 1.0])
    base = rng.uniform(0.03, 0.45, (5, BANDS))
    change = rng.normal(0, 0.03, (5, BANDS))
    f1 = base[labels].transpose(2, 0, 1) + rng.normal(0, 0.01, (BANDS, h, w))
    f2 = f1 + change[labels].transpose(2, 0, 1)
    f2 += gaussian_filter(rng.normal(0, 0.5, (h, w)), 20)[None] * 0.05
    return tuple(a.astype(np.float32) for a in (block_mean(f1), f1, block_mean(f2), f2))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def case_memory(case: str, n_jobs: int, block_size: int | None, save: str | None) -> dict[str, Any]:
    """fsdaf() on arrays in memory (the same computation as prepare() + predict_scene)."""
    from stfusion.baselines.fsdaf import fsdaf

    h, w = (int(v) for v in case.split("x"))
    c1, f1, c2, f2 = synthetic_scene(h, w)
    start = time.perf_counter()
    pred = fsdaf(c1, f1, c2, scale_factor=SCALE, block_size=block_size, n_jobs=n_jobs)
    wall = time.perf_counter() - start
    if save:
        np.save(save, pred)
    return {
        "case": case,
        "wall_s": round(wall, 2),
        "mpx_per_s": round(h * w / 1e6 / wall, 3),
        "rmse_vs_truth": round(float(np.sqrt(np.nanmean((pred - f2) ** 2))), 5),
    }


class GeneratedScene:
    """A SceneSource whose rows are generated on request (periodic patterns): never held whole."""

    def __init__(self, height: int, width: int) -> None:
        rng = np.random.default_rng(0)
        self.height, self.width, self.bands, self.n_pairs = height, width, BANDS, 1
        self._fine = (0.05 + 0.35 * rng.random((BANDS, 193, 181))).astype(np.float32)
        self._coarse = (0.05 + 0.35 * rng.random((BANDS, 29, 23))).astype(np.float32)

    def block(self, top: int, stop: int) -> Any:
        from stfusion.blocks import Block, ReferencePair

        rows, cols = np.arange(top, stop), np.arange(self.width)
        fine = self._fine[:, rows % 193][:, :, cols % 181]
        coarse = self._coarse[:, (rows // SCALE) % 29][:, :, (cols // SCALE) % 23]
        return Block(top, (ReferencePair(coarse=coarse, fine=fine),), coarse + np.float32(0.01))


def case_stream(case: str, n_jobs: int, block_size: int | None, strips: int) -> dict[str, Any]:
    """prepare() on a generated scene (statistics passes), then its first ``strips`` strips."""
    from stfusion.baselines.fsdaf import prepare

    h, w = (int(v) for v in case.split("x"))
    source = GeneratedScene(h, w)
    start = time.perf_counter()
    prediction = prepare(source, scale_factor=SCALE, block_size=block_size, n_jobs=n_jobs)
    prepare_s = time.perf_counter() - start
    starts = [*prediction.row_starts(h, w), h]
    stop = starts[min(strips, len(starts) - 1)]
    start = time.perf_counter()
    for _ in prediction.iter_rows(source, 0, stop):
        pass
    rows_s = time.perf_counter() - start
    return {
        "case": f"stream {case}",
        "prepare_s": round(prepare_s, 2),
        "strips": strips,
        "rows": stop,
        "strips_s": round(rows_s, 2),
        "strip_mpx_per_s": round(stop * w / 1e6 / rows_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default=None, help="HxW: run this case in this process")
    parser.add_argument("--stream", default=None, metavar="HxW", help="streaming case (generated scene)")
    parser.add_argument("--strips", type=int, default=1, help="strips predicted in the streaming case")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=None, help="coarse cells (default: FSDAF's)")
    parser.add_argument("--save", default=None, help="write the prediction of --case to this .npy")
    args = parser.parse_args()
    if args.case is not None or args.stream is not None:
        if args.case is not None:
            result = case_memory(args.case, args.n_jobs, args.block_size, args.save)
        else:
            result = case_stream(args.stream, args.n_jobs, args.block_size, args.strips)
        result.update(
            bands=BANDS,
            scale_factor=SCALE,
            block_size=args.block_size,
            n_jobs=args.n_jobs,
            peak_rss_mb=round(peak_rss_mb(), 1),
        )
        print(json.dumps(result), flush=True)
        return
    for case in CASES:
        cmd = [sys.executable, __file__, "--case", case, "--n-jobs", str(args.n_jobs)]
        if args.block_size is not None:
            cmd += ["--block-size", str(args.block_size)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()

"""FSDAF speed and memory benchmark (not a test): prints one JSON line per case.

Each case runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own.

    .venv/bin/python benchmarks/bench_fsdaf.py                 # 608x595 and 2040x1720 (6 bands)
    .venv/bin/python benchmarks/bench_fsdaf.py --large         # + 10980x10980 int16 GeoTIFF
    .venv/bin/python benchmarks/bench_fsdaf.py --large --max-blocks 4   # measured subset and a
                                                               # labelled extrapolation

The large case streams: global statistics from a decimated read (classification centres, noise
clamp, similarity threshold) and from block-wise cell tables (exact ΔF), then blocks are read
with rasterio windows plus margin and written to a tiled GeoTIFF as they finish.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SCALE = 16
BANDS = 6


def synthetic_scene(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """6-band float32 reflectance scene with patchy classes; coarse = 16x16 block means."""
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


def block_mean(image: np.ndarray) -> np.ndarray:
    from stfusion.baselines.fsdaf import _cell_expand, _cell_sum

    h, w = image.shape[-2:]
    return _cell_expand(_cell_sum(image, SCALE) / _cell_sum(np.ones((h, w)), SCALE), SCALE, (h, w))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def case_memory(h: int, w: int, block_size: int | None, n_jobs: int) -> dict[str, object]:
    from stfusion.baselines.fsdaf import fsdaf

    c1, f1, c2, f2 = synthetic_scene(h, w)
    start = time.perf_counter()
    pred = fsdaf(c1, f1, c2, scale_factor=SCALE, block_size=block_size, n_jobs=n_jobs)
    wall = time.perf_counter() - start
    rmse = float(np.sqrt(np.nanmean((pred - f2) ** 2)))
    return {"wall_s": round(wall, 2), "rmse": round(rmse, 5), "s_per_mpix": round(wall / (h * w / 1e6), 2)}


def write_large_inputs(folder: str, size: int) -> list[str]:
    """int16 x 1e4 tiled GeoTIFFs (fine t1, coarse t1, coarse t2) generated strip by strip."""
    import rasterio
    from rasterio.transform import from_origin

    names = [os.path.join(folder, n) for n in ("fine_t1.tif", "coarse_t1.tif", "coarse_t2.tif")]
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=BANDS,
        dtype="int16",
        crs="EPSG:32633",
        transform=from_origin(300000, 5000000, 10, 10),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        nodata=-9999,
    )
    strip = 1024
    files = [rasterio.open(n, "w", **profile) for n in names]
    try:
        for r0 in range(0, size, strip):
            rows = min(strip, size - r0)
            c1, f1, c2, _ = synthetic_scene(rows, size, seed=r0)
            window = rasterio.windows.Window(0, r0, size, rows)
            for dst, arr in zip(files, (f1, c1, c2), strict=True):
                dst.write(np.rint(arr * 1e4).astype(np.int16), window=window)
    finally:
        for f in files:
            f.close()
    return names


def case_large(size: int, block_size: int, n_jobs: int, max_blocks: int | None) -> dict[str, object]:
    import rasterio
    from rasterio.windows import Window

    from stfusion.baselines.fsdaf import (
        FSDAFConfig,
        apply_noise_fix,
        block_windows,
        cell_table,
        classify,
        finalize_statistics,
        fit_classes,
        fit_noise_fix,
        fsdaf_block,
        merge_cell_tables,
        similarity_threshold,
    )

    config = FSDAFConfig.from_preset(scale_factor=SCALE, block_size=block_size, n_jobs=n_jobs)
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        t0 = time.perf_counter()
        paths = write_large_inputs(tmp, size)
        out["generate_s"] = round(time.perf_counter() - t0, 1)
        srcs = [rasterio.open(p) for p in paths]

        def read(win: tuple[slice, slice]) -> tuple[np.ndarray, ...]:
            w = Window.from_slices(*win)
            arrays = []
            for src in srcs:
                a = src.read(window=w).astype(np.float32)
                a[a == -9999] = np.nan
                arrays.append(a * np.float32(1e-4))
            f1, c1, c2 = arrays
            return c1, f1, c2

        t0 = time.perf_counter()
        # global pixel statistics from a decimated read (approximation, see module docstring)
        dec = size // 8
        sample = srcs[0].read(out_shape=(BANDS, dec, dec)).reshape(BANDS, -1).astype(np.float64)
        sample *= 1e-4
        centres = fit_classes(
            sample[:, :: max(1, sample.shape[1] // 100_000)].T, n_classes=config.n_classes, seed=config.seed
        )
        n_classes = centres.shape[0]
        noise = fit_noise_fix(sample, dn_min=config.dn_min, dn_max=config.dn_max)
        similarity = similarity_threshold(sample, n_classes)
        windows = block_windows(size, size, config=config)
        tables = []
        for win in windows:  # exact cell table, block by block
            c1, f1, c2 = read(win.core)
            valid = np.isfinite(c1).all(0) & np.isfinite(f1).all(0) & np.isfinite(c2).all(0)
            labels = classify(f1, valid, centres)
            tables.append(
                cell_table(
                    c1,
                    apply_noise_fix(f1, noise),
                    c2,
                    labels,
                    valid,
                    scale_factor=SCALE,
                    n_classes=n_classes,
                    origin=(win.core[0].start, win.core[1].start),
                )
            )
        stats = finalize_statistics(
            merge_cell_tables(tables), n_classes=n_classes, similarity=similarity, noise=noise, config=config
        )
        out["statistics_s"] = round(time.perf_counter() - t0, 1)
        profile = srcs[0].profile
        t0 = time.perf_counter()
        todo = windows if max_blocks is None else windows[:max_blocks]
        pixels = 0
        with rasterio.open(os.path.join(tmp, "pred.tif"), "w", **profile) as dst:
            for win in todo:
                c1, f1, c2 = read(win.read)
                valid = np.isfinite(c1).all(0) & np.isfinite(f1).all(0) & np.isfinite(c2).all(0)
                labels = classify(f1, valid, centres)
                res = fsdaf_block(
                    c1,
                    f1,
                    c2,
                    labels,
                    valid & (labels > 0),
                    statistics=stats,
                    config=config,
                    core=win.core_in_read,
                )
                pred = np.where(np.isfinite(res.prediction), np.rint(res.prediction * 1e4), -9999)
                dst.write(np.clip(pred, -32768, 32767).astype(np.int16), window=Window.from_slices(*win.core))
                pixels += (win.core[0].stop - win.core[0].start) * (win.core[1].stop - win.core[1].start)
        for src in srcs:
            src.close()
        blocks_s = time.perf_counter() - t0
        out.update(
            blocks_done=len(todo),
            blocks_total=len(windows),
            blocks_s=round(blocks_s, 1),
            s_per_mpix=round(blocks_s / (pixels / 1e6), 2),
        )
        if max_blocks is not None and len(todo) < len(windows):
            out["extrapolated_total_s"] = round(
                out["generate_s"] * 0 + out["statistics_s"] + blocks_s * size * size / pixels
            )  # type: ignore[operator]
            out["note"] = (
                "EXTRAPOLATION: blocks_s scaled by total/processed core pixels; the first blocks "
                "lie on the image edge (smaller read margins), so this may be optimistic"
            )
    return out


def child(args: argparse.Namespace) -> None:
    if args.case == "large":
        result = case_large(args.size, args.block_size, args.n_jobs, args.max_blocks)
    else:
        h, w = (int(v) for v in args.case.split("x"))
        result = case_memory(h, w, args.block_size, args.n_jobs)
    result.update(
        case=args.case,
        bands=BANDS,
        scale_factor=SCALE,
        block_size=args.block_size,
        n_jobs=args.n_jobs,
        peak_rss_mb=round(peak_rss_mb(), 1),
    )
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", action="store_true", help="also run the 10980x10980 case")
    parser.add_argument(
        "--max-blocks",
        type=int,
        default=None,
        help="large case: process only this many blocks and extrapolate",
    )
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=10980, help=argparse.SUPPRESS)
    parser.add_argument("--block-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        child(args)
        return
    cases = [("608x595", None), ("608x595", 30), ("2040x1720", 30)]
    if args.large:
        cases.append(("large", 30))
    for case, block in cases:
        cmd = [sys.executable, __file__, "--case", case, "--n-jobs", str(args.n_jobs)]
        if block is not None:
            cmd += ["--block-size", str(block)]
        if case == "large" and args.max_blocks is not None:
            cmd += ["--max-blocks", str(args.max_blocks)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()

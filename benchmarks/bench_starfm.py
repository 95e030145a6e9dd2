"""Speed and peak-memory benchmark of STARFM (window 31, 4 classes, 6 bands). Not a test.

Each case runs in a fresh subprocess; the parent prints one JSON line per case with the wall time of
the prediction and the child's own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, read at its end).

Cases (``--sizes``): ``608x595`` and ``2040x1720`` run in memory on synthetic scenes (smooth fields +
class patches + noise); ``10980x10980`` writes three synthetic int16 tiled GeoTIFFs into ``--workdir``
and predicts them streaming: row blocks with a halo are read with rasterio windows and the output
rows are written to a tiled GeoTIFF as they complete, so memory depends on the block, not the scene.
``--rows N`` limits a streaming case to its first N output rows (a throughput measurement).

    python benchmarks/bench_starfm.py --sizes 608x595,2040x1720
    python benchmarks/bench_starfm.py --sizes 10980x10980 --workdir /tmp/starfm-bench
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
from pathlib import Path

import numpy as np

OPTIONS = {"window_size": 31, "n_classes": 4}


def synthetic_scene(height: int, width: int, bands: int = 6, seed: int = 0, rows: slice | None = None):  # type: ignore[no-untyped-def]
    """(coarse_t1, fine_t1, coarse_t2) float32 reflectance for rows ``rows`` of a synthetic scene.

    Deterministic per pixel (depends on absolute coordinates), so blocks of a big scene can be made
    independently: smooth sinusoidal fields, 4 class patches on a 40-pixel grid, hashed noise,
    coarse = 16x16 block means of the fine field (approximated by the smooth part) + bias.
    """
    rows = rows or slice(0, height)
    y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    cls = ((np.floor(y / 40) * 7 + np.floor(x / 40) * 13) % 4).astype(np.float32)
    noise = np.sin(y * 12.9898 + x * 78.233) * 43758.5453
    noise = (noise - np.floor(noise) - 0.5).astype(np.float32)
    out = []
    for t, shift in ((0, 0.0), (1, 0.0), (2, 0.03)):
        bands_out = []
        for b in range(bands):
            smooth = 0.15 + 0.05 * np.sin(y / 150 + b) * np.cos(x / 170 - b)
            fine = smooth + 0.05 * cls * (1 + 0.1 * b) + 0.01 * noise
            yc, xc = np.floor(y / 16) * 16 + 8, np.floor(x / 16) * 16 + 8
            coarse = 0.15 + 0.05 * np.sin(yc / 150 + b) * np.cos(xc / 170 - b) + 0.075 * (1 + 0.1 * b) + 0.01
            bands_out.append((fine if t == 1 else coarse) + shift + 0.002 * t)
        out.append(np.stack(bands_out).astype(np.float32))
    return out[0], out[1], out[2]


def run_memory_case(height: int, width: int) -> dict:
    from stfusion.baselines.starfm import starfm

    c1, f1, c2 = synthetic_scene(height, width)
    start = time.perf_counter()
    pred = starfm(c1, f1, c2, **OPTIONS)
    return {"seconds": time.perf_counter() - start, "nan_fraction": float(np.isnan(pred).mean())}


def make_geotiffs(folder: Path, size: int) -> list[Path]:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    paths = [folder / f"{name}_{size}.tif" for name in ("coarse_t1", "fine_t1", "coarse_t2")]
    if all(p.exists() for p in paths):
        return paths
    profile = {
        "driver": "GTiff", "dtype": "int16", "count": 6, "height": size, "width": size,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
        "crs": "EPSG:32633", "transform": from_origin(300000, 5000000, 10, 10), "nodata": -9999,
    }  # fmt: skip
    files = [rasterio.open(p, "w", **profile) for p in paths]
    try:
        for r0 in range(0, size, 128):
            r1 = min(size, r0 + 128)
            for f, arr in zip(files, synthetic_scene(size, size, rows=slice(r0, r1)), strict=True):
                f.write(np.rint(arr * 1e4).astype(np.int16), window=Window(0, r0, size, r1 - r0))
    finally:
        for f in files:
            f.close()
    return paths


def run_stream_case(folder: Path, size: int, rows_limit: int | None, block: int = 64) -> dict:
    import rasterio
    from rasterio.windows import Window

    from stfusion.baselines.starfm import (
        FineStdAccumulator,
        halo_rows,
        make_config,
        starfm_block,
        tolerances_from_std,
    )

    paths = make_geotiffs(folder, size)
    cfg = make_config(**OPTIONS)
    halo = halo_rows(cfg)
    srcs = [rasterio.open(p) for p in paths]
    start = time.perf_counter()
    acc = FineStdAccumulator()  # pass 1: global std of the fine image (the tolerance, spec eq. 7)
    for r0 in range(0, size, 128):
        win = Window(0, r0, size, min(128, size - r0))
        acc.update([srcs[1].read(window=win).astype(np.float32) * np.float32(1e-4)])
    tolerances = tolerances_from_std(acc.std, cfg)
    stats_seconds = time.perf_counter() - start
    n_rows = min(size, rows_limit or size)
    profile = srcs[1].profile | {"dtype": "int16", "nodata": -9999, "height": n_rows}
    out_path = folder / f"starfm_{size}.tif"
    with rasterio.open(out_path, "w", **profile) as dst:
        for r0 in range(0, n_rows, block):
            r1 = min(n_rows, r0 + block)
            a, b = max(0, r0 - halo), min(size, r1 + halo)
            win = Window(0, a, size, b - a)
            c1, f1, c2 = (s.read(window=win).astype(np.float32) * np.float32(1e-4) for s in srcs)
            pred = starfm_block(
                [c1], [f1], c2, tolerances=tolerances, halo_top=r0 - a, halo_bottom=b - r1, config=cfg
            )
            stored = np.where(np.isnan(pred), -9999, np.rint(pred * 1e4)).astype(np.int16)
            dst.write(stored, window=Window(0, r0, size, r1 - r0))
    seconds = time.perf_counter() - start
    for s in srcs:
        s.close()
    return {
        "seconds": seconds,
        "stats_seconds": stats_seconds,
        "rows": n_rows,
        "megapixels_per_s": n_rows * size / 1e6 / (seconds - stats_seconds),
    }


def child(args: argparse.Namespace) -> None:
    # GDAL's block cache defaults to 5% of RAM; bound it so peak RSS reflects STARFM's blocks.
    os.environ.setdefault("GDAL_CACHEMAX", "128")
    height, width = (int(v) for v in args.child.split("x"))
    if args.generate:
        make_geotiffs(Path(args.workdir), height)
        return
    if height >= 4096:
        result = run_stream_case(Path(args.workdir), height, args.rows)
    else:
        result = run_memory_case(height, width)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", default="608x595,2040x1720", help="comma-separated HxW cases")
    parser.add_argument("--workdir", default=None, help="folder for the big synthetic GeoTIFFs")
    parser.add_argument("--rows", type=int, default=None, help="limit streaming cases to N rows")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="starfm-bench-")
    # Warm the numba on-disk cache so that compile time is not charged to the first case.
    warm = [sys.executable, __file__, "--child", "64x64"]
    subprocess.run(warm, check=True, capture_output=True)
    for size in args.sizes.split(","):
        cmd = [sys.executable, __file__, "--child", size, "--workdir", workdir]
        if int(size.split("x")[0]) >= 4096:  # make the GeoTIFFs in their own process (not measured)
            subprocess.run([*cmd, "--generate"], check=True, capture_output=True)
        if args.rows:
            cmd += ["--rows", str(args.rows)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        total = time.perf_counter() - start
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        record = {
            "case": f"{size}x6",
            "window": 31,
            "n_classes": 4,
            **result,
            "process_seconds": total,
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()

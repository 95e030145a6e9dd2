"""Speed and peak-memory benchmark of STARFM presets (6 bands). Not a test.

Each case runs in a fresh subprocess; the parent prints one JSON line per case and preset with the
wall time of the prediction, its throughput (scene megapixels per second, all bands), the child's own
peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, read at its end), its CPU time and the hole counts.

Only the package's public API is used: ``stfusion.baselines.starfm.prepare`` on a
``stfusion.blocks.SceneSource`` (the method-registry path), ``stfusion.blocks.predict_scene`` /
``Prediction.iter_rows``, ``stfusion.raster`` for GeoTIFF windows and the row writer.

Cases (``--sizes``): ``608x595`` and ``2040x1720`` run in memory (``ArraySource``) on synthetic scenes
(smooth fields + class patches + noise); ``10980x10980`` writes three synthetic int16 tiled GeoTIFFs
into ``--workdir`` and predicts them streaming: row blocks with a halo are read as GeoTIFF windows
and the output rows are written to a tiled GeoTIFF as they complete, so memory depends on the block,
not the scene. ``--rows N`` limits a streaming case to its first N output rows (a throughput
measurement). Each preset runs with its own defaults unless ``--options`` (JSON) overrides them.

    python benchmarks/bench_starfm.py --sizes 608x595,2040x1720 --presets starfm_v121,starfm4py
    python benchmarks/bench_starfm.py --presets starfm_v121 --options '{"window_size": 31, "n_classes": 4}'
    python benchmarks/bench_starfm.py --sizes 10980x10980 --rows 512 --workdir /tmp/starfm-bench

``--accuracy`` instead prints a Markdown table of RMSE on the bundled real datasets
(``stfusion.sample.DATASETS``, one reference pair each) for every preset x window x classes x
fill_holes; RMSE per band over the pixels valid in the inputs and the truth and predicted in every
band (as ``stfusion.metrics.compute_metrics`` selects them), then the mean over bands:

    python benchmarks/bench_starfm.py --accuracy
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
from typing import Any

import numpy as np


def synthetic_scene(
    height: int, width: int, bands: int = 6, rows: slice | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def holes_of(prediction: Any) -> dict[str, list[int]]:
    return {
        "holes_no_candidate": prediction.holes.no_candidate.tolist(),
        "holes_out_of_range": prediction.holes.out_of_range.tolist(),
    }


def run_memory_case(height: int, width: int, options: dict[str, Any]) -> dict[str, Any]:
    from stfusion.baselines.starfm import prepare
    from stfusion.blocks import ArraySource, predict_scene

    c1, f1, c2 = synthetic_scene(height, width)
    source = ArraySource([(c1, f1)], c2)
    start = time.perf_counter()
    prediction = prepare(source, **options)
    result = predict_scene(prediction, source)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "megapixels_per_s": height * width / 1e6 / seconds,
        "nan_fraction": float(np.isnan(result).mean()),
        **holes_of(prediction),
    }


def make_geotiffs(folder: Path, size: int) -> list[Path]:
    """Three synthetic int16 (x 1e4) tiled GeoTIFFs (set-up, not measured; rasterio directly)."""
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


class GeoTiffSource:
    """A one-pair :class:`stfusion.blocks.SceneSource` reading row windows of three GeoTIFFs."""

    def __init__(self, coarse_t1: Path, fine_t1: Path, coarse_t2: Path) -> None:
        from stfusion import raster

        self.paths = (coarse_t1, fine_t1, coarse_t2)
        self.info = raster.inspect(fine_t1)

    @property
    def bands(self) -> int:
        return self.info.count

    @property
    def height(self) -> int:
        return self.info.height

    @property
    def width(self) -> int:
        return self.info.width

    @property
    def n_pairs(self) -> int:
        return 1

    def block(self, top: int, stop: int) -> Any:
        from stfusion import raster
        from stfusion.blocks import Block, ReferencePair

        window = raster.make_window(top, 0, stop - top, self.width)
        c1, f1, c2 = (raster.read(p, scale=1e-4, window=window).data for p in self.paths)
        return Block(top=top, pairs=(ReferencePair(coarse=c1, fine=f1),), coarse_t2=c2)


def run_stream_case(
    folder: Path, size: int, rows_limit: int | None, options: dict[str, Any]
) -> dict[str, Any]:
    from stfusion import raster
    from stfusion.baselines.starfm import prepare

    source = GeoTiffSource(*make_geotiffs(folder, size))
    start = time.perf_counter()
    prediction = prepare(source, **{"block_rows": 64, **options})  # pass 1: global std, if any
    stats_seconds = time.perf_counter() - start
    n_rows = min(size, rows_limit or size)
    out_path = folder / f"starfm_{size}.tif"
    rows = None if n_rows == size else (0, n_rows)
    with raster.row_writer(out_path, source.info, count=source.bands, rows=rows, overwrite=True) as write:
        for row, block in prediction.iter_rows(source, 0, n_rows):
            write(row, block)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "stats_seconds": stats_seconds,
        "rows": n_rows,
        "megapixels_per_s": n_rows * size / 1e6 / (seconds - stats_seconds),
        **holes_of(prediction),
    }


#: (dataset, reference date, target date) of the accuracy table: one reference pair each.
ACCURACY_CASES = (
    ("cia-crop", "20011008", "20011017"),
    ("cia-crop", "20011017", "20011102"),
    ("estarfm-site", "20010524", "20010711"),
    ("lgc-flood", "20041126", "20041228"),
)


def accuracy_table(presets: list[str], windows: list[int], classes: list[int]) -> None:
    """Print the RMSE table (Markdown) of every preset / window / classes / fill_holes combination."""
    from stfusion import raster
    from stfusion.baselines.starfm import prepare
    from stfusion.blocks import ArraySource, predict_scene
    from stfusion.sample import DATASETS

    header = ["preset", "window", "classes", "fill_holes"]
    rows: dict[tuple[str, int, int, bool], list[str]] = {}
    for name, ref, target in ACCURACY_CASES:
        header.append(f"{name} {ref[4:]}->{target[4:]}")

        def read(role: str, date: str, name: str = name) -> np.ndarray:
            return raster.read(DATASETS[name] / f"{role}_{date}.tif", scale=1e-4).data

        c1, f1, c2, truth = (
            read("coarse", ref),
            read("fine", ref),
            read("coarse", target),
            read("fine", target),
        )
        valid = np.isfinite(np.stack([c1, f1, c2, truth])).all(axis=(0, 1))
        source = ArraySource([(c1, f1)], c2)
        for preset in presets:
            for window in windows:
                for n_classes in classes:
                    for fill in (True, False):
                        options = {"preset": preset, "window_size": window, "n_classes": n_classes}
                        prediction = prepare(source, fill_holes=fill, **options)
                        pred = predict_scene(prediction, source)
                        used = valid & np.isfinite(pred).all(axis=0)
                        rmse = np.sqrt(np.mean((pred[:, used] - truth[:, used]) ** 2, axis=1)).mean()
                        dropped = int(valid.sum() - used.sum())
                        cell = f"{rmse:.5f}" + (f" ({dropped} px dropped)" if dropped else "")
                        cell += f" [{prediction.holes.total} holes]" if prediction.holes.total else ""
                        rows.setdefault((preset, window, n_classes, fill), []).append(cell)
                        print(name, ref, target, preset, window, n_classes, fill, cell, file=sys.stderr)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (preset, window, n_classes, fill), cells in rows.items():
        print(f"| {preset} | {window} | {n_classes} | {fill} | " + " | ".join(cells) + " |")


def child(args: argparse.Namespace) -> None:
    height, width = (int(v) for v in args.child.split("x"))
    if args.generate:
        make_geotiffs(Path(args.workdir), height)
        return
    options = json.loads(args.options)
    if height >= 4096:
        result = run_stream_case(Path(args.workdir), height, args.rows, options)
    else:
        result = run_memory_case(height, width, options)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    # CPU seconds of the whole child (import, warm-up, input synthesis included): on a shared machine
    # wall time depends on the load, CPU time much less.
    result["process_cpu_seconds"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", default="608x595,2040x1720", help="comma-separated HxW cases")
    parser.add_argument(
        "--presets", default=None, help="comma-separated presets (default: v121, starfm4py; accuracy: all)"
    )
    parser.add_argument("--options", default="{}", help="JSON options applied to every preset")
    parser.add_argument("--workdir", default=None, help="folder for the big synthetic GeoTIFFs")
    parser.add_argument("--rows", type=int, default=None, help="limit streaming cases to N rows")
    parser.add_argument("--accuracy", action="store_true", help="RMSE table on the bundled datasets")
    parser.add_argument("--windows", default="31,51", help="window sizes of the accuracy table")
    parser.add_argument("--classes", default="4,40", help="class counts of the accuracy table")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.accuracy:
        windows, classes = (list(map(int, v.split(","))) for v in (args.windows, args.classes))
        accuracy_table((args.presets or "starfm_v121,gao2006,starfm4py").split(","), windows, classes)
        return
    from stfusion.baselines.starfm import make_config

    workdir = args.workdir or tempfile.mkdtemp(prefix="starfm-bench-")
    for preset in (args.presets or "starfm_v121,starfm4py").split(","):
        options = {"preset": preset, **json.loads(args.options)}
        config = make_config(**options)
        # Warm the numba on-disk cache so that compile time is not charged to the first case.
        warm = [sys.executable, __file__, "--child", "64x64", "--options", json.dumps(options)]
        subprocess.run(warm, check=True, capture_output=True)
        for size in args.sizes.split(","):
            cmd = [sys.executable, __file__, "--child", size, "--workdir", workdir]
            if int(size.split("x")[0]) >= 4096:  # make the GeoTIFFs in their own process (not measured)
                subprocess.run([*cmd, "--generate"], check=True, capture_output=True)
            cmd += ["--options", json.dumps(options)]
            if args.rows:
                cmd += ["--rows", str(args.rows)]
            start = time.perf_counter()
            proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
            total = time.perf_counter() - start
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            record = {
                "case": f"{size}x6",
                "preset": preset,
                "window": 2 * config.half_window + 1,
                "n_classes": config.n_classes,
                **result,
                "process_seconds": total,
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()

"""Time per additional target date of a series (`stfusion fuse`) against a standalone `stfusion predict`.

A benchmark, not a test: prints JSON lines. For each method, on the ESTARFM sample (400 x 400 x 3) with
synthetic extra coarse dates (interpolated between the real ones), it times as whole processes, pair by
pair in alternation (the machine is shared):

- ``predict``: one `stfusion predict` of one date (the reference pairs of that date, as `fuse` chooses);
- ``fuse_1`` and ``fuse_N``: `stfusion fuse` over a folder with 1 and N dates to predict (same pairs).

``per_date`` = (fuse_N - fuse_1) / (N - 1): what one more date costs inside a series (the method is
prepared once, the model loaded once, the process and compiled kernels are already there). The issue's
goal: per_date <= 60 % of predict.

    .venv/bin/python benchmarks/bench_series.py --methods starfm,estarfm,fsdaf --dates 6 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FINE_DATES = (dt.date(2001, 5, 24), dt.date(2001, 8, 12))
TRUTH_DATE = dt.date(2001, 7, 11)


def build(folder: Path, n_dates: int) -> list[dt.date]:
    """Fine + coarse of 05-24 and 08-12, and the 07-11 coarse image plus n - 1 synthetic coarse dates."""
    from stfusion import raster
    from stfusion.sample import DATASETS

    root = DATASETS["estarfm-site"]
    folder.mkdir(parents=True)
    for date in FINE_DATES:
        for role in ("fine", "coarse"):
            shutil.copy2(root / f"{role}_{date:%Y%m%d}.tif", folder / f"{role}_{date:%Y%m%d}.tif")
    shutil.copy2(root / f"coarse_{TRUTH_DATE:%Y%m%d}.tif", folder / f"coarse_{TRUTH_DATE:%Y%m%d}.tif")
    base = raster.read(root / f"coarse_{TRUTH_DATE:%Y%m%d}.tif")
    dates = [TRUTH_DATE]
    rng = np.random.default_rng(0)
    for k in range(1, n_dates):
        date = TRUTH_DATE + dt.timedelta(days=k)
        image = base.data + rng.normal(0, 0.003, base.data.shape).astype(np.float32)
        raster.write_like(folder / f"coarse_{date:%Y%m%d}.tif", image, base.info)
        dates.append(date)
    return dates


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="starfm,estarfm,fsdaf")
    parser.add_argument("--dates", type=int, default=6, help="N: dates predicted by the long series")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    stfusion = [sys.executable, "-m", "stfusion", "-q", "--threads", str(args.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one, many = root / "one", root / "many"
        build(one, 1)
        build(many, args.dates)
        for method in args.methods.split(","):
            pairs = [
                "--fine-t1",
                str(one / "fine_20010524.tif"),
                "--coarse-t1",
                str(one / "coarse_20010524.tif"),
            ]
            # both pairs, as fuse chooses them (one-pair methods run per pair and are combined)
            predict_args = [*stfusion, "predict", "--method", method, *pairs]
            predict_args += ["--fine-t3", str(one / "fine_20010812.tif"), "--coarse-t3"]
            predict_args += [
                str(one / "coarse_20010812.tif"),
                "--coarse-t2",
                str(one / "coarse_20010711.tif"),
            ]
            times: dict[str, list[float]] = {"predict": [], "fuse_1": [], "fuse_N": []}
            timed([*predict_args, "--out", str(root / "warm.tif"), "--overwrite"])  # compile caches
            for run in range(args.repeat):
                out = root / f"{method}-{run}"
                times["predict"].append(timed([*predict_args, "--out", f"{out}-p.tif"]))
                times["fuse_1"].append(
                    timed([*stfusion, "fuse", str(one), "--out", f"{out}-1", "--method", method])
                )
                times["fuse_N"].append(
                    timed([*stfusion, "fuse", str(many), "--out", f"{out}-N", "--method", method])
                )
            medians = {k: statistics.median(v) for k, v in times.items()}
            per_date = (medians["fuse_N"] - medians["fuse_1"]) / (args.dates - 1)
            print(
                json.dumps(
                    {
                        "method": method,
                        "scene": "estarfm-site 400x400x3, pairs 2001-05-24 + 2001-08-12",
                        "dates": args.dates,
                        "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
                        "median_s": {k: round(v, 2) for k, v in medians.items()},
                        "per_additional_date_s": round(per_date, 2),
                        "per_date_over_predict": round(per_date / medians["predict"], 3),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()

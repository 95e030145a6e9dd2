"""ESTARFM speed and memory benchmark (not a test): prints one JSON line per case on stdout.

Each case runs in a fresh subprocess, so its peak RSS (``VmHWM``, read inside it) is its own. A case
times the first call (numba's compiled kernels loaded from the on-disk cache, or compiled when the
cache is cold), then ``--repeat`` calls: best and median wall time, Mpx/s (target pixels / best),
CPU seconds of the best run (all threads). Peak RSS is the process's high-water mark after the inputs
are made (reset there through ``/proc/self/clear_refs``): interpreter, libraries, inputs and ESTARFM.

Cases:
* ``estarfm-site``: the bundled sample (400 x 400 x 3, pairs 2001-05-24 + 2001-08-12, coarse 2001-07-11),
  h = 25, m = 4, preset ``idl``, float32 as read and float64 (the spec's precision test); also RMSE.
* ``2040x1720``: a synthetic 2040 x 1720 x 3 float32 scene (``--large``; patchy textured land covers,
  16 x 16 coarse pixels), same options.

    .venv/bin/python benchmarks/bench_estarfm.py                # sample, threads as numba configures
    .venv/bin/python benchmarks/bench_estarfm.py --large        # + 2040 x 1720 x 3
    .venv/bin/python benchmarks/bench_estarfm.py --cold         # compile into an empty numba cache
    NUMBA_NUM_THREADS=2 .venv/bin/python benchmarks/bench_estarfm.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "src" / "stfusion" / "sample" / "datasets" / "estarfm-site"
OPTIONS: dict[str, Any] = {"preset": "idl", "half_window": 25, "n_classes": 4}


def site_scene(dtype: str) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """(coarse_t1, fine_t1, coarse_t3, fine_t3, coarse_t2), truth: the spec section 7 demo."""
    from stfusion.raster import read

    def load(name: str) -> np.ndarray:
        return read(SITE / name, scale=1e-4).data.astype(dtype)

    dates = ("20010524", "20010812")
    args = (
        load(f"coarse_{dates[0]}.tif"), load(f"fine_{dates[0]}.tif"),
        load(f"coarse_{dates[1]}.tif"), load(f"fine_{dates[1]}.tif"), load("coarse_20010711.tif"),
    )  # fmt: skip
    return args, load("fine_20010711.tif")


def synthetic_scene(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Float32 (coarse_t1, fine_t1, coarse_t3, fine_t3, coarse_t2): 5 land covers in ~30 px patches
    with texture (about as heterogeneous as the sample: median |S| ~ 200 of 2601 at h = 25), a
    class-dependent change t1 -> t3 (t2 part-way), coarse = 16 x 16 block means."""
    from scipy.ndimage import gaussian_filter, zoom

    rng = np.random.default_rng(seed)
    patch = 30
    field = zoom(rng.normal(size=(height // patch + 2, width // patch + 2)), patch, order=1)[:height, :width]
    labels = np.digitize(field, [-0.8, -0.2, 0.4, 1.0])
    spectra = np.array([[0.05, 0.03, 0.02], [0.06, 0.03, 0.35], [0.08, 0.07, 0.28], [0.12, 0.15, 0.23],
                        [0.11, 0.12, 0.18]])  # fmt: skip
    change = np.array([[0, 0, 0], [0.005, -0.005, 0.03], [0.01, -0.03, 0.15], [0.01, 0.015, 0.01],
                       [0, 0, 0]])  # fmt: skip

    def texture() -> np.ndarray:
        t = np.stack([gaussian_filter(rng.normal(size=(height, width)), 1.0) for _ in range(3)])
        return t / t.std(axis=(1, 2), keepdims=True) * np.array([0.015, 0.015, 0.045])[:, None, None]

    f1 = spectra[labels].transpose(2, 0, 1) + texture()
    f3 = f1 + change[labels].transpose(2, 0, 1) + 0.3 * texture()
    f2 = f1 + 0.6 * change[labels].transpose(2, 0, 1)

    def coarse(image: np.ndarray) -> np.ndarray:
        s = 16
        h, w = image.shape[1] // s * s, image.shape[2] // s * s
        means = image[:, :h, :w].reshape(3, h // s, s, w // s, s).mean(axis=(2, 4))
        full = np.repeat(np.repeat(means, s, axis=1), s, axis=2)
        return np.pad(full, ((0, 0), (0, image.shape[1] - h), (0, image.shape[2] - w)), mode="edge")

    return tuple(a.astype(np.float32) for a in (coarse(f1), f1, coarse(f3), f3, coarse(f2)))


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(float(line.split()[1]) / 1024.0, 1)
    return float("nan")


def run_case(case: str, dtype: str, repeat: int) -> dict[str, Any]:
    """Child process: time ESTARFM on one case."""
    import numba

    from stfusion.baselines.estarfm import estarfm

    truth = None
    if case == "estarfm-site":
        args, truth = site_scene(dtype)
    else:
        height, width = (int(v) for v in case.split("x"))
        args = synthetic_scene(height, width)
    gc.collect()
    # Scene generation's temporaries must not count: restart the high-water mark here.
    reset = reset_peak_rss()
    rss_before = peak_rss_mib()
    start = time.perf_counter()
    pred, diag = estarfm(*args, return_diagnostics=True, **OPTIONS)
    first = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        pred = estarfm(*args, **OPTIONS)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    best = min(walls)
    pixels = args[0].shape[1] * args[0].shape[2]
    record: dict[str, Any] = {
        "figure": "estarfm",
        "case": case,
        "shape": list(args[0].shape),
        "dtype": dtype,
        "options": OPTIONS,
        "numba_threads": numba.get_num_threads(),
        "first_call_s": round(first, 3),
        "best_s": round(best, 3),
        "median_s": round(statistics.median(walls), 3),
        "runs": repeat,
        "cpu_s_of_best": round(cpus[walls.index(best)], 3),
        "mpx_per_s": round(pixels / best / 1e6, 4),
        "median_similar": float(np.median(diag.n_similar)),
        "fallback_fraction": round(float(diag.fallback.mean()), 4),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_reset_before_timing": reset,
    }
    if truth is not None:
        rmse = np.sqrt(np.mean((pred.astype(np.float64) - truth) ** 2, axis=(1, 2)))
        record["rmse_g_r_nir"] = [round(float(v), 6) for v in rmse]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs after the first call")
    parser.add_argument("--large", action="store_true", help="also the 2040 x 1720 x 3 synthetic scene")
    parser.add_argument("--cold", action="store_true", help="compile into an empty numba cache")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "DTYPE", "REPEAT"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        print(json.dumps(run_case(ns.child[0], ns.child[1], int(ns.child[2]))), flush=True)
        return
    cases = [("estarfm-site", "float32", ns.repeat), ("estarfm-site", "float64", ns.repeat)]
    if ns.large:
        cases.append(("2040x1720", "float32", max(1, min(ns.repeat, 2))))
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        if ns.cold:
            env["NUMBA_CACHE_DIR"] = cache
        for i, (case, dtype, repeat) in enumerate(cases):
            done = subprocess.run(
                [sys.executable, __file__, "--child", case, dtype, str(repeat)],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                raise SystemExit(f"case {case} {dtype} failed")
            record = json.loads(done.stdout.strip().splitlines()[-1])
            # Only the first child of a cold run compiles; later ones load its cache.
            record["numba_cache"] = (
                ("cold" if i == 0 else "filled by the first case") if ns.cold else "as found"
            )
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()

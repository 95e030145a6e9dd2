"""Speed and memory figures of stfusion (a benchmark, not a test: it prints, it does not assert).

Prints one JSON object per line on stdout (logs go to stderr); the ``figure`` key says which:

* ``machine``: CPU model, core and thread counts, library versions, git commit.
* ``train``: one MLFF-GAN training step (``stfusion.train.gan_step``: one discriminator step, then one
  generator step, Adam) on a batch of 4 random 256 x 256 x 6 patches; median and min step time over
  ``--repeat`` steps after ``--warmup`` excluded steps, patches/s, peak RSS.
* ``flops``: FLOPs of one generator forward (1024 x 768 x 6, batch 1, counted by
  ``torch.utils.flop_counter.FlopCounterMode``), its time (median/min), the achieved GFLOP/s, the
  machine's dense float32 matmul GFLOP/s (2048 x 2048, best of several) and their ratio.
* ``data``: the synthetic scene used for prediction (generated once, then cached in ``--data-dir``).
* ``predict``: one fusion method on one synthetic scene, from GeoTIFFs to a GeoTIFF: seconds,
  megapixels/s (H * W / 1e6 / seconds) and peak RSS. Every method goes through the package's one path,
  as ``stfusion predict`` runs it: the registry (``stfusion.fusion``) prepares it on the case (global
  statistics passes for STARFM and FSDAF) and ``stfusion.streaming.predict_case`` streams it block by
  block (MLFF-GAN with random weights, the speed is the same: tiles of ``--tile`` with ``--overlap``,
  ``--batch-size`` tiles per batch). With ``--tile-rows N`` the large scenes are predicted for their
  first N blocks only and the whole-scene time is extrapolated (``"extrapolated": true``).

Every measured case runs in a fresh subprocess, whose own peak RSS (VmHWM) is reported.

    .venv/bin/python benchmarks/bench_speed.py --quick              # smoke run, well under a minute
    .venv/bin/python benchmarks/bench_speed.py                      # all figures, full sizes
    .venv/bin/python benchmarks/bench_speed.py --only predict --sizes 10980x10980 --tile-rows 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    BANDS,
    COARSE_FACTOR,
    emit,
    git_commit,
    log,
    parse_size,
    peak_rss_mib,
    rss_mib,
    run_child,
    set_threads,
    synthetic_scene,
    thread_env,
)

FIGURES = ("machine", "train", "flops", "predict")
METHODS = ("mlffgan", "persistence", "coarse-delta", "starfm", "fsdaf")

FULL = {
    "train_batch": 4,
    "patch": 256,
    "flops_size": "1024x768",
    "matmul": 2048,
    "sizes": "2040x1720,10980x10980",
    "tile": "1024x768",
    "overlap": 64,
    "repeat": 5,
    "warmup": 2,
}
QUICK = {
    "train_batch": 1,
    "patch": 128,
    "flops_size": "256x256",
    "matmul": 512,
    "sizes": "256x256",
    "tile": "128x128",
    "overlap": 16,
    "repeat": 2,
    "warmup": 1,
}


# ------------------------------------------------------------------------------------------------
# Children: each runs in its own process and returns one dict (printed as JSON by child_main)
# ------------------------------------------------------------------------------------------------


def child_machine(params: dict[str, Any]) -> dict[str, Any]:
    from _common import machine_info

    return machine_info(params.get("threads"))


def child_train(params: dict[str, Any]) -> dict[str, Any]:
    """Step times of stfusion.train.gan_step (warm-up steps excluded)."""
    import torch

    from stfusion.checkpoint import ModelSpec
    from stfusion.models import PatchDiscriminator
    from stfusion.train import TrainConfig, gan_step

    set_threads(params.get("threads"))
    torch.manual_seed(0)
    batch_size, patch = params["train_batch"], params["patch"]
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            save_dir=tmp,
            batch_size=batch_size,
            patch_size=patch,
            device="cpu",
            channels_last=params["channels_last"],
        )
    generator = ModelSpec("mlffgan", BANDS, {}).build().train()
    discriminator = PatchDiscriminator(BANDS).train()
    if params["channels_last"]:  # as stfusion.train.train does
        generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        discriminator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=config.betas)
    shape = (batch_size, BANDS, patch, patch)
    batch = {role: torch.rand(shape) for role in ("coarse_t1", "fine_t1", "coarse_t2", "fine_t2")}
    batch["valid"] = torch.ones((batch_size, 1, patch, patch), dtype=torch.bool)
    rss_before = rss_mib()
    for _ in range(params["warmup"]):  # first steps allocate the Adam state and pick kernels
        gan_step(generator, discriminator, optimizer_g, optimizer_d, batch, config)
    times, losses = [], {}
    for _ in range(params["repeat"]):
        start = time.perf_counter()
        losses = gan_step(generator, discriminator, optimizer_g, optimizer_d, batch, config)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "batch": list(shape),
        "channels_last": params["channels_last"],
        "warmup_steps": params["warmup"],
        "steps": len(times),
        "step_median_s": round(median, 4),
        "step_min_s": round(min(times), 4),
        "patches_per_s": round(batch_size / median, 3),
        "patches_per_s_best": round(batch_size / min(times), 3),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "finite_losses": all(abs(v) < float("inf") for v in losses.values()),
        "threads": torch.get_num_threads(),
    }


def child_flops(params: dict[str, Any]) -> dict[str, Any]:
    """FLOPs of one generator forward, its achieved GFLOP/s, and the machine's matmul GFLOP/s."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stfusion.checkpoint import ModelSpec

    set_threads(params.get("threads"))
    torch.manual_seed(0)
    height, width = parse_size(params["flops_size"])
    generator = ModelSpec("mlffgan", BANDS, {}).build().eval()
    coarse_t1, fine_t1, coarse_t2 = (torch.rand(1, BANDS, height, width) for _ in range(3))
    if params["channels_last"]:  # as stfusion.predict.generator_batch_predictor runs it
        generator = generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        coarse_t1, fine_t1, coarse_t2 = (
            x.contiguous(memory_format=torch.channels_last) for x in (coarse_t1, fine_t1, coarse_t2)
        )

    def forward() -> None:
        generator(coarse_t1=coarse_t1, fine_t1=fine_t1, coarse_t2=coarse_t2)

    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            forward()
        flops = counter.get_total_flops()
        by_op = {str(op): count for op, count in counter.get_flop_counts().get("Global", {}).items()}
        forward()  # warm-up
        times = []
        for _ in range(params["repeat"]):
            start = time.perf_counter()
            forward()
            times.append(time.perf_counter() - start)
    n = params["matmul"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    matmul_times = []
    for _ in range(max(5, params["repeat"])):
        start = time.perf_counter()
        torch.mm(a, b)
        matmul_times.append(time.perf_counter() - start)
    matmul_gflops = 2 * n**3 / min(matmul_times) / 1e9
    achieved_best = flops / min(times) / 1e9
    return {
        "input": [1, BANDS, height, width],
        "channels_last": params["channels_last"],
        "gflop_per_forward": round(flops / 1e9, 3),
        "gflop_per_megapixel": round(flops / 1e9 / (height * width / 1e6), 3),
        "gflop_by_op": {op: round(count / 1e9, 3) for op, count in sorted(by_op.items())},
        "forward_median_s": round(statistics.median(times), 4),
        "forward_min_s": round(min(times), 4),
        "achieved_gflops_best": round(achieved_best, 2),
        "achieved_gflops_median": round(flops / statistics.median(times) / 1e9, 2),
        "matmul": f"{n}x{n} float32",
        "matmul_gflops_best": round(matmul_gflops, 2),
        "ratio_best": round(achieved_best / matmul_gflops, 4),
        "peak_rss_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }


def child_scene(params: dict[str, Any]) -> dict[str, Any]:
    height, width = parse_size(params["size"])
    return synthetic_scene(Path(params["data_dir"]), height, width)


def _partial_rows(starts: list[int], height: int, wanted: int) -> tuple[int, int, int]:
    """(world_size, stop_row, blocks measured) for ``--tile-rows``: rank 0 of a world_size-way split.

    The first rows are predicted as rank 0 of a split (``RankSplit``), the package's own streaming code
    for a row range; world_size is chosen so that rank 0 gets about ``wanted`` of the method's blocks.
    """
    from stfusion.streaming import split_rows

    wanted = max(1, min(wanted, len(starts)))

    def blocks(world: int) -> int:
        return sum(1 for s in starts if s < split_rows(starts, height, world)[0][1])

    best = min(range(1, len(starts) + 1), key=lambda k: abs(blocks(k) - wanted))
    return best, split_rows(starts, height, best)[0][1], blocks(best)


def _preparer(method: str, params: dict[str, Any]) -> Any:
    """The method through the registry, as `stfusion predict` builds it (random MLFF-GAN weights)."""
    import torch

    from stfusion import fusion
    from stfusion.checkpoint import Checkpoint, ModelSpec
    from stfusion.predict import TileOptions

    entry = fusion.get(method)
    if not entry.needs_checkpoint:
        options = {"scale_factor": COARSE_FACTOR} if method == "fsdaf" else {}
        return entry.preparer(options)
    torch.manual_seed(0)
    spec = ModelSpec("mlffgan", BANDS, {})
    checkpoint = Checkpoint(model=spec, generator=spec.build().state_dict(), coarse_factor=COARSE_FACTOR)
    tile = parse_size(params["tile"])
    tiles = TileOptions(
        tile=tile, overlap=(params["overlap"], params["overlap"]), batch_size=params["batch_size"]
    )
    return entry.preparer(checkpoint=checkpoint, runtime={"tiles": tiles})


def _warm(preparer: Any) -> float:
    """Predict a tiny scene once (numba compilation or cache load, first-call costs); seconds."""
    import numpy as np

    from stfusion.blocks import ArraySource, predict_scene

    rng = np.random.default_rng(0)
    c1, f1, c2 = (rng.uniform(0.05, 0.3, (BANDS, 96, 96)).astype(np.float32) for _ in range(3))
    start = time.perf_counter()
    source = ArraySource([(c1, f1)], c2)
    predict_scene(preparer(source), source)
    return time.perf_counter() - start


def child_predict(params: dict[str, Any]) -> dict[str, Any]:
    """One method on one scene, GeoTIFFs in, GeoTIFF out, through stfusion.streaming.predict_case."""
    from stfusion.inputs import CaseReader
    from stfusion.scenes import explicit_case
    from stfusion.streaming import RankSplit, predict_case

    set_threads(params.get("threads"))
    method = params["method"]
    reader = CaseReader(explicit_case(**params["paths"]))
    height, width = reader.height, reader.width
    out = Path(params["out_dir"]) / f"pred_{method}_{height}x{width}.tif"
    preparer = _preparer(method, params)
    result: dict[str, Any] = {
        "gdal_cachemax": os.environ.get("GDAL_CACHEMAX", "GDAL default"),
        "warmup_s": round(_warm(preparer), 3),
        "rss_before_mib": rss_mib(),
    }
    start = time.perf_counter()
    prediction = preparer(reader)  # global statistics passes (STARFM, FSDAF), model set-up
    prepare_seconds = time.perf_counter() - start
    split, stop, done = RankSplit(), height, None
    starts = prediction.row_starts(height, width)
    if params.get("partial"):
        world, stop, done = _partial_rows(starts, height, params["tile_rows"])
        split = RankSplit(rank=0, world_size=world) if done < len(starts) else RankSplit()
        stop, done = (height, None) if done == len(starts) else (stop, done)
    written = predict_case(reader, prediction, out, overwrite=True, split=split)
    seconds = time.perf_counter() - start
    assert written is not None
    result |= {
        "output_mib": round(written.stat().st_size / 2**20, 1),
        "prepare_seconds": round(prepare_seconds, 3),
    }
    if not params.get("keep_outputs"):
        written.unlink()
    result["peak_rss_mib"] = peak_rss_mib()
    result["peak_rss_increase_mib"] = round(result["peak_rss_mib"] - result["rss_before_mib"], 1)
    if done is None:
        return result | {
            "seconds": round(seconds, 3),
            "megapixels_per_s": round(height * width / 1e6 / seconds, 4),
        }
    total = prepare_seconds + (seconds - prepare_seconds) * len(starts) / done
    return result | {
        "extrapolated": True,
        "measured_blocks": done,
        "blocks_total": len(starts),
        "measured_rows": stop,
        "measured_seconds": round(seconds, 3),
        "extrapolated_seconds": round(total, 1),
        "megapixels_per_s": round(height * width / 1e6 / total, 4),
        "note": (
            "EXTRAPOLATED: extrapolated_seconds = prepare (measured, whole scene) + block seconds x blocks / "
            "measured blocks; peak RSS is that of the measured rows (memory depends on one block)"
        ),
    }


CHILDREN = {
    "machine": child_machine,
    "train": child_train,
    "flops": child_flops,
    "scene": child_scene,
    "predict": child_predict,
}


# ------------------------------------------------------------------------------------------------
# Parent: no torch import here (it would only add its own memory); every figure is a child
# ------------------------------------------------------------------------------------------------


def _child(name: str, params: dict[str, Any], threads: int | None) -> dict[str, Any]:
    arguments = ["--child", name, "--params", json.dumps(params)]
    env = thread_env(threads)
    if params.get("gdal_cachemax"):
        env["GDAL_CACHEMAX"] = str(params["gdal_cachemax"])
    return run_child(__file__, arguments, env=env)


def run_predictions(args: argparse.Namespace, common: dict[str, Any]) -> None:
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    out_dir = Path(tempfile.mkdtemp(prefix="predictions-", dir=data_dir))
    try:
        for size in args.sizes.split(","):
            height, width = parse_size(size)
            large = height * width / 1e6 > args.stream_above
            log(f"scene {height}x{width}x{BANDS}: generating or reusing the synthetic GeoTIFFs")
            scene = _child("scene", {"size": size, "data_dir": str(data_dir)}, args.threads)
            paths = scene.pop("paths")
            emit({"figure": "data", "scene": f"{height}x{width}x{BANDS}", **scene, "folder": str(data_dir)})
            for method in args.methods.split(","):
                record: dict[str, Any] = {
                    "figure": "predict",
                    "method": method,
                    "scene": f"{height}x{width}x{BANDS}",
                }
                partial = bool(large and args.tile_rows and method in args.partial_methods.split(","))
                params = {
                    **common,
                    "method": method,
                    "paths": paths,
                    "out_dir": str(out_dir),
                    "partial": partial,
                }
                for run in range(1, args.predict_repeat + 1):
                    log(f"predict {method}{' (partial)' if partial else ''} {size}, run {run}")
                    emit(record | {"run": run} | _child("predict", params, args.threads))
    finally:
        if not args.keep_outputs:
            shutil.rmtree(out_dir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (< 1 minute)")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma list of {', '.join(FIGURES)}")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch/OpenMP/numba threads (default: theirs)"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed train steps and forwards (5; quick 2)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="excluded train steps (2; quick 1)")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (4; quick 1)")
    parser.add_argument("--patch", type=int, default=None, help="training patch side (256; quick 128)")
    parser.add_argument("--flops-size", default=None, help="HxW of the counted forward (1024x768)")
    parser.add_argument("--matmul", type=int, default=None, help="side of the reference matmul (2048)")
    parser.add_argument("--sizes", default=None, help="scenes HxW, comma list (2040x1720,10980x10980)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of methods to predict with")
    parser.add_argument("--tile", default=None, help="prediction tile HxW (1024x768; quick 128x128)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (64; quick 16)")
    parser.add_argument("--batch-size", type=int, default=1, help="prediction tiles per batch (1)")
    parser.add_argument(
        "--predict-repeat", type=int, default=1, help="fresh processes per prediction, one line each (1)"
    )
    parser.add_argument(
        "--stream-above",
        type=float,
        default=40.0,
        help="scenes above this many megapixels are 'large': --tile-rows applies to them (40)",
    )
    parser.add_argument(
        "--tile-rows",
        type=int,
        default=None,
        help="large scenes: predict only the first N rows of tiles and extrapolate (labelled)",
    )
    parser.add_argument(
        "--partial-methods",
        default="mlffgan",
        help="methods that --tile-rows applies to (mlffgan); the others run the whole scene",
    )
    parser.add_argument(
        "--data-dir",
        default=str(Path(tempfile.gettempdir()) / "stfusion-bench-data"),
        help="cache of the synthetic GeoTIFFs (and scratch for the predictions)",
    )
    parser.add_argument(
        "--gdal-cachemax",
        default=None,
        help="GDAL_CACHEMAX for the prediction processes, MB (default: GDAL's own, 5%% of RAM)",
    )
    parser.add_argument("--keep-outputs", action="store_true", help="keep the predicted GeoTIFFs")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="MLFF-GAN prediction in channels_last layout (the library default; --no-channels-last: NCHW)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.only.split(",")) - set(FIGURES)
    unknown_methods = set(args.methods.split(",")) - set(METHODS)
    if unknown or unknown_methods:
        parser.error(f"unknown figure(s) or method(s): {', '.join(sorted(unknown | unknown_methods))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.params))), flush=True)
        return
    common = {
        "threads": args.threads,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "train_batch": args.train_batch,
        "patch": args.patch,
        "flops_size": args.flops_size,
        "matmul": args.matmul,
        "tile": args.tile,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "channels_last": args.channels_last,
        "tile_rows": args.tile_rows,
        "keep_outputs": args.keep_outputs,
        "gdal_cachemax": args.gdal_cachemax,
    }
    figures = args.only.split(",")
    started = time.perf_counter()
    if "machine" in figures:
        info = _child("machine", common, args.threads)
        emit({"figure": "machine", **info, "git": git_commit(Path(__file__).resolve().parent.parent)})
    if "train" in figures:
        log(f"train step: batch {args.train_batch} x {BANDS} x {args.patch} x {args.patch}")
        emit({"figure": "train", **_child("train", common, args.threads)})
    if "flops" in figures:
        log(f"generator FLOPs at {args.flops_size}, matmul {args.matmul}")
        emit({"figure": "flops", **_child("flops", common, args.threads)})
    if "predict" in figures:
        run_predictions(args, common)
    log(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

"""Speed and memory of the MLFF-GAN networks (a benchmark, not a test: it prints, it does not assert).

Prints one JSON line per case:

* ``generator_forward``: MLFFGenerator(6) in eval mode under ``torch.inference_mode``, batch 1,
  a 1024 x 768 tile; wall time per forward (median of repeats after one warm-up), peak resident set
  size of the process (RSS, from ``getrusage``) and its increase over the state just before the first
  forward (model, inputs and imports excluded); on CUDA also the peak allocated GPU memory.
* ``train_step``: one discriminator step (LSGAN, detached fake) then one generator step (L1 +
  MS-SSIM + cosine + 0.01 LSGAN), Adam lr 2e-4, batch 4, 256 x 256, 6 bands; wall time per step
  (median after one warm-up step) and peak RSS. The coarse degradation is not included (it is a
  transform applied by the data pipeline).

Each case runs in its own subprocess so that peak RSS belongs to that case alone.

Usage: ``python benchmarks/bench_networks.py [--repeats N] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from stfusion.losses import generator_loss, lsgan_discriminator_loss
from stfusion.models import MLFFGenerator, PatchDiscriminator

BANDS = 6


def _rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _common(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def bench_forward(repeats: int, device: torch.device) -> dict[str, object]:
    """Generator inference on one 1024 x 768 tile."""
    torch.manual_seed(0)
    model = MLFFGenerator(BANDS).to(device).eval()
    images = [torch.rand(1, BANDS, 1024, 768, device=device) for _ in range(3)]
    rss_before = _rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        model(*images)  # warm-up
        times = _timed(lambda: model(*images), repeats, device)
    result: dict[str, object] = {
        "case": "generator_forward",
        "shape": [1, BANDS, 1024, 768],
        "repeats": repeats,
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "peak_rss_mib": round(_rss_mib(), 1),
        "rss_increase_mib": round(_rss_mib() - rss_before, 1),
    }
    if device.type == "cuda":
        result["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result | _common(device)


def bench_train_step(repeats: int, device: torch.device) -> dict[str, object]:
    """One D step then one G step, batch 4, 256 x 256."""
    torch.manual_seed(0)
    generator = MLFFGenerator(BANDS).to(device).train()
    discriminator = PatchDiscriminator(BANDS).to(device).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.9, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.9, 0.999))
    coarse_t1, fine_t1, coarse_t2, fine_t2 = (torch.rand(4, BANDS, 256, 256, device=device) for _ in range(4))
    last: dict[str, float] = {}

    def step() -> None:
        fake = generator(coarse_t1, fine_t1, coarse_t2)
        opt_d.zero_grad(set_to_none=True)
        d_loss = lsgan_discriminator_loss(
            discriminator(fine_t2, coarse_t2), discriminator(fake.detach(), coarse_t2)
        )
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        g_loss, parts = generator_loss(fake, fine_t2, discriminator(fake, coarse_t2))
        g_loss.backward()
        opt_g.step()
        last.update({"d_loss": d_loss.item(), "g_loss": g_loss.item()})
        last.update({name: value.item() for name, value in parts.items()})

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()  # warm-up (also allocates the Adam state)
    times = _timed(step, repeats, device)
    result: dict[str, object] = {
        "case": "train_step",
        "batch": [4, BANDS, 256, 256],
        "repeats": repeats,
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "peak_rss_mib": round(_rss_mib(), 1),
        "losses_last_step": {name: round(value, 5) for name, value in last.items()},
    }
    if device.type == "cuda":
        result["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result | _common(device)


CASES = {"generator_forward": bench_forward, "train_step": bench_train_step}


def main() -> None:
    """Run every case in a subprocess (or one case in-process with ``--case``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(CASES[args.case](args.repeats, torch.device(args.device))), flush=True)
        return
    for case in CASES:
        command = [sys.executable, __file__, "--case", case, "--repeats", str(args.repeats)]
        subprocess.run([*command, "--device", args.device], check=True)


if __name__ == "__main__":
    main()

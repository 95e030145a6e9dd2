"""Drop-in for the MLFF-GAN paper's script: ``python run.py --data_dir D --save_dir S``.

Trains on D/train, selects the best epoch on D/val, tests on D/test (or on D/val when there is no
test folder, saying so), and writes checkpoints, history, GeoTIFF predictions and metric tables under
S. Every flag of the paper's script is accepted with the same meaning and defaults; booleans may be
written True/False. Flags for what the paper fixed in code: --train_patch_size, --coarse_factor,
--seed, --resume. Any image size works, so --image_size is accepted and only reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from stfusion import distributed
from stfusion.errors import StfusionError
from stfusion.losses import GeneratorLossWeights
from stfusion.predict import TileOptions
from stfusion.train import TrainConfig
from stfusion.workflows import run_experiment


class StepProgress:
    """A bar over the training steps of an epoch (on a terminal only), and one line per epoch."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.bar: Any = None

    def step(self, step: int, losses: dict[str, float]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc="steps", unit="step", leave=False, disable=None)  # None: off unless a tty
        self.bar.update(1)
        self.bar.set_postfix(g=f"{losses['g_loss']:.4f}", d=f"{losses['d_loss']:.4f}")

    def epoch(self, record: dict[str, float]) -> None:
        self.close()
        print(
            f"epoch {int(record['epoch'])}/{self.epochs}: g_loss {record['g_loss']:.4f} "
            f"d_loss {record['d_loss']:.4f} val_mse {record['val_mse']:.6f}",
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def str2bool(text: str | bool) -> bool:
    """True/False (also yes/no, 1/0), as the paper's command lines write booleans."""
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in {"true", "t", "yes", "y", "1"}:
        return True
    if value in {"false", "f", "no", "n", "0"}:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    flag: dict[str, Any] = {"type": str2bool, "nargs": "?", "const": True}
    parser.add_argument("--data_dir", required=True, help="folder with train/, val/ (and test/) pair folders")
    parser.add_argument("--save_dir", required=True, help="output folder")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--cuda", default=False, **flag, help="train and test on the GPU")
    parser.add_argument("--ngpu", type=int, default=1, help="GPUs (more than 1: use torchrun)")
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--image_size", type=int, nargs=2, default=None, help="accepted; any size works")
    parser.add_argument("--patch_stride", type=int, default=200, help="training patch stride")
    parser.add_argument("--patch_size", type=int, nargs=2, default=[1024, 768], help="TEST tile size H W")
    parser.add_argument("--cut_num", type=int, default=None, help="accepted; tiling follows --patch_size")
    parser.add_argument("--ifAdaIN", default=True, **flag)
    parser.add_argument("--ifAttention", default=True, **flag)
    parser.add_argument("--ifTwoInput", default=False, **flag)
    parser.add_argument("--ifAmplificat", default=True, **flag, help="date-swap augmentation")
    parser.add_argument("--a", type=float, default=0.01, help="adversarial weight")
    parser.add_argument("--b", type=float, default=1.0, help="L1 weight")
    parser.add_argument("--c", type=float, default=1.0, help="spectral cosine weight")
    parser.add_argument("--d", type=float, default=1.0, help="MS-SSIM weight")
    parser.add_argument("--train_patch_size", type=int, default=256)
    parser.add_argument("--coarse_factor", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--resume", default=False, **flag)
    parser.add_argument("--overwrite", default=False, **flag, help="replace a run already in --save_dir")
    parser.add_argument(
        "--ratio",
        type=_fine_over_coarse,
        default=None,
        help="ERGAS fine/coarse pixel-size ratio h/l, at most 1 (e.g. 0.0625 for 30 m / 480 m)",
    )
    return parser


def _fine_over_coarse(text: str) -> float:
    """--ratio: h/l in (0, 1]; a coarse/fine ratio (16) is refused with its inverse named."""
    value = float(text)
    if not 0 < value <= 1:
        hint = f"; for a coarse/fine ratio of {value:g} give {1 / value:g}" if value > 1 else ""
        raise argparse.ArgumentTypeError(f"{text}: the fine/coarse pixel-size ratio is within (0, 1]{hint}")
    return value


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        save_dir=args.save_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patch_size=args.train_patch_size,
        patch_stride=args.patch_stride,
        coarse_factor=args.coarse_factor,
        seed=args.seed,
        adain=args.ifAdaIN,
        attention=args.ifAttention,
        two_input=args.ifTwoInput,
        date_swap=args.ifAmplificat,
        weights=GeneratorLossWeights(adversarial=args.a, l1=args.b, cosine=args.c, ms_ssim=args.d),
        val_tile=(args.patch_size[0], args.patch_size[1]),
        device="cuda" if args.cuda else "cpu",
        num_workers=args.num_workers,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.image_size is not None:
        print(f"--image_size {args.image_size[0]} {args.image_size[1]}: not needed, any image size works")
    if args.cut_num is not None:
        print(f"--cut_num {args.cut_num}: test tiles follow --patch_size {args.patch_size} with blending")
    if args.cuda:
        import torch

        if not torch.cuda.is_available():
            print("error: --cuda given but no CUDA device is available", file=sys.stderr)
            return 2
    if args.ngpu > 1:
        print(
            f"--ngpu {args.ngpu}: one process drives one device; for {args.ngpu} GPUs launch "
            f"`torchrun --nproc_per_node {args.ngpu} run.py ...` (data-parallel, same global --batch_size)"
        )
    config = config_from_args(args)
    tiles = TileOptions(tile=config.val_tile, overlap=config.val_overlap)
    try:
        config.validate()
        context = distributed.setup(config.device)
    except (StfusionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    steps = StepProgress(config.epochs)
    try:
        result = run_experiment(
            Path(args.data_dir),
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            context=context,
            tiles=tiles,
            ratio=args.ratio,
            say=print,
            on_step=steps.step,
            on_epoch=steps.epoch,
        )
    except StfusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: rerun with --resume True to continue from the last finished epoch", file=sys.stderr
        )
        return 130
    finally:
        steps.close()
        distributed.teardown(context)
    if result.test_split is None:
        return 0  # a rank > 0 of a torchrun job: rank 0 reports
    print(f"best checkpoint: {result.train.best}")
    if "markdown" in result.tables:
        print(result.tables["markdown"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

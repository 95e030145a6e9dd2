"""The `stfusion` command line: predict, evaluate, cases (and more as the package grows).

Every command turns a :class:`~stfusion.errors.StfusionError` into one line on stderr and exit code 2:
bad input never ends in a traceback, and outputs are written atomically, so none is left half-written.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np

from stfusion import __version__, distributed, raster, scenes, workflows
from stfusion.checkpoint import load_checkpoint, load_generator
from stfusion.errors import InputError, StfusionError
from stfusion.inputs import CaseReader, ReadOptions, check_values, row_windows
from stfusion.methods import METHOD_NAMES
from stfusion.predict import BatchPredictor, TileOptions, generator_batch_predictor, method_batch_predictor
from stfusion.scenes import MIN_COARSE_OVERLAP
from stfusion.streaming import RankSplit, join_parts, predict_to_file
from stfusion.train import TrainConfig

F = TypeVar("F", bound=Callable[..., Any])
EXIT_INPUT_ERROR = 2

#: Methods predicted tile by tile with streaming I/O (the others read whole scenes).
STREAMING_METHODS: frozenset[str] = frozenset({"mlffgan", "persistence", "coarse-delta"})


EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)
_SKIP_HINT = "finished outputs are complete; rerun with --skip-existing to do the rest"
_RESUME_HINTS = {
    "train_command": "rerun with --resume to continue from the last finished epoch (last.ckpt)",
    "predict_command": _SKIP_HINT,
    "test_command": _SKIP_HINT,
    "compare_command": _SKIP_HINT,
}


def one_line_errors(command: F) -> F:
    """Report StfusionError as ``error: <message>`` on stderr and exit 2 (no traceback).

    Ctrl-C gives one line too (exit 130): every output is written atomically, so what exists is
    complete, and the line says how to continue.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except StfusionError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_INPUT_ERROR)
        except KeyboardInterrupt:
            hint = _RESUME_HINTS.get(command.__name__, "outputs written so far are complete")
            click.echo(f"interrupted: {hint}", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` strings to a dict; values parsed as JSON when possible (numbers, booleans)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--option {pair!r}: expected key=value, e.g. --option window_size=31")
        try:
            options[key.replace("-", "_")] = json.loads(text)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = text
    return options


def reading_options(command: F) -> F:
    """Click options on how input files become pixels: ``--resampling`` and ``--min-overlap``.

    The command receives ``resampling: str`` and ``min_overlap: float``; :func:`read_options` turns
    them into the :class:`~stfusion.inputs.ReadOptions` for CaseReader / workflows.
    """
    command = click.option(
        "--min-overlap",
        type=click.FloatRange(0.0, 1.0),
        default=MIN_COARSE_OVERLAP,
        show_default=True,
        help="Fraction of the fine grid a coarse image's footprint must cover.",
    )(command)
    return click.option(
        "--resampling",
        type=click.Choice(raster.RESAMPLING_METHODS),
        default="bilinear",
        show_default=True,
        help="Resampling of coarse images (and masks) not on the fine grid, e.g. MODIS at 500 m.",
    )(command)


def read_options(resampling: str, min_overlap: float) -> ReadOptions:
    """The ReadOptions of the values of :func:`reading_options`."""
    return ReadOptions(resampling=resampling, min_overlap=min_overlap)


def mask_options(command: F) -> F:
    """Click options for explicit mask files (nonzero = invalid pixel, e.g. cloud or QA rasters).

    The command receives ``mask``, ``mask_fine_t1``, ``mask_coarse_t1``, ``mask_coarse_t2`` (Path or
    None); :func:`explicit_masks` turns them into the ``masks`` of ``scenes.explicit_case``.
    """
    for role in ("coarse_t2", "coarse_t1", "fine_t1"):
        flag = "--mask-" + role.replace("_", "-")
        text = role.replace("_", " ")
        command = click.option(
            flag, type=click.Path(path_type=Path), default=None, help=f"Mask of the {text} image."
        )(command)
    return click.option(
        "--mask",
        type=click.Path(path_type=Path),
        default=None,
        help="Mask for every input image (nonzero = invalid); on the fine grid or georeferenced.",
    )(command)


def output_state_options(command: F) -> F:
    """``--skip-existing`` (resume an interrupted run) and ``--quality`` (write quality bands)."""
    command = click.option(
        "--quality",
        is_flag=True,
        help="Also write <case>/quality.tif: 0 = all inputs valid, else the sum of 1 (fine t1 invalid), "
        "2 (coarse t1), 4 (coarse t2).",
    )(command)
    return click.option(
        "--skip-existing",
        is_flag=True,
        help="Keep predictions that exist (resume an interrupted run); they are read back and scored.",
    )(command)


def _make_output_folder(out: Path) -> Path:
    """Create an output folder (and parents); InputError if impossible."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; --out needs a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror})") from exc
    raster.check_writable(out / "probe", overwrite=True)
    return out


def explicit_masks(
    mask: Path | None, mask_fine_t1: Path | None, mask_coarse_t1: Path | None, mask_coarse_t2: Path | None
) -> dict[str, Path]:
    """Role -> mask file from the values of :func:`mask_options` (a role's own mask wins over --mask)."""
    masks = {role: mask for role in ("coarse_t1", "fine_t1", "coarse_t2")} if mask is not None else {}
    own = {"fine_t1": mask_fine_t1, "coarse_t1": mask_coarse_t1, "coarse_t2": mask_coarse_t2}
    masks.update({role: path for role, path in own.items() if path is not None})
    return masks


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stfusion")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads per process for PyTorch (default: PyTorch's; torchrun sets 1 per process).",
)
def cli(verbose: bool, threads: int | None) -> None:
    """Spatiotemporal fusion of satellite images: predict a fine image at a target date."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# cases


@cli.command("cases")
@click.argument("folder", type=click.Path(path_type=Path))
@one_line_errors
def cases_command(folder: Path) -> None:
    """List the fusion cases found in FOLDER and the files skipped (and why)."""
    discovery = scenes.discover(folder)
    click.echo(f"{folder}: {len(discovery.cases)} case(s), layout {discovery.layout}")
    for case in discovery.cases:
        split = f"[{case.split}] " if case.split else ""
        truth = case.fine_t2.name if case.fine_t2 else "(no truth)"
        click.echo(f"  {split}{case.name}: {case.date_t1} -> {case.date_t2}")
        click.echo(f"      coarse_t1 {case.coarse_t1.name}  fine_t1 {case.fine_t1.name}")
        click.echo(f"      coarse_t2 {case.coarse_t2.name}  fine_t2 {truth}")
        for role, mask in case.masks.items():
            click.echo(f"      mask of {role}: {mask.name}")
    for skipped in discovery.skipped:
        click.echo(f"  skipped {skipped.path}: {skipped.reason}")


# --------------------------------------------------------------------------------------------------
# predict


@cli.command("predict")
@click.option(
    "--method",
    type=click.Choice([*METHOD_NAMES, "mlffgan"]),
    default=None,
    help="Fusion method [default: mlffgan with --checkpoint, else coarse-delta].",
)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="MLFF-GAN checkpoint.")
@click.option("--tile", type=(int, int), default=(1024, 768), show_default=True, help="Tile rows cols.")
@click.option("--overlap", type=int, default=64, show_default=True, help="Tile overlap in pixels.")
@click.option("--batch-size", type=int, default=1, show_default=True, help="Tiles per batch.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
@click.option("--fine-t1", type=click.Path(path_type=Path), required=True, help="Fine image at t1.")
@click.option("--coarse-t1", type=click.Path(path_type=Path), required=True, help="Coarse image at t1.")
@click.option(
    "--coarse-t2",
    type=click.Path(path_type=Path),
    required=True,
    multiple=True,
    help="Coarse image at the target date; repeat for several target dates.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output GeoTIFF; a folder when several --coarse-t2 are given (pred_<coarse name>.tif).",
)
@click.option("--option", "options", multiple=True, help="Method option key=value (repeatable).")
@click.option("--dtype", type=click.Choice(["int16", "float32"]), default="int16", show_default=True)
@click.option("--scale", type=float, default=1e-4, show_default=True, help="Reflectance per stored unit.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option(
    "--skip-existing", is_flag=True, help="Skip targets whose output exists (rerun an interrupted job)."
)
@click.option("--cog", is_flag=True, help="Write Cloud Optimized GeoTIFFs (with overviews).")
@click.option("--amp", is_flag=True, help="MLFF-GAN: bf16 autocast (CUDA only).")
@click.option("--compile", "compile_model", is_flag=True, help="MLFF-GAN: torch.compile the generator.")
@click.option(
    "--quality",
    is_flag=True,
    help="Also write <out stem>_quality.tif: 0 = all inputs valid, else the sum of 1 (fine t1 invalid), "
    "2 (coarse t1), 4 (coarse t2).",
)
@mask_options
@reading_options
@one_line_errors
def predict_command(
    method: str | None,
    checkpoint: Path | None,
    tile: tuple[int, int],
    overlap: int,
    batch_size: int,
    device: str,
    fine_t1: Path,
    coarse_t1: Path,
    coarse_t2: tuple[Path, ...],
    out: Path,
    options: tuple[str, ...],
    dtype: str,
    scale: float,
    overwrite: bool,
    skip_existing: bool,
    cog: bool,
    amp: bool,
    compile_model: bool,
    quality: bool,
    mask: Path | None,
    mask_fine_t1: Path | None,
    mask_coarse_t1: Path | None,
    mask_coarse_t2: Path | None,
    resampling: str,
    min_overlap: float,
) -> None:
    """Predict the fine image at each target date from a reference pair and the coarse image(s).

    MLFF-GAN, persistence and coarse-delta stream: tiles are read as windows and rows written as they
    are finished, so any scene size fits in memory; under `torchrun --nproc_per_node N -m stfusion
    predict ...` the rows of each scene are split across the N processes and joined into one file.
    STARFM and FSDAF read the whole scene (they process it in row blocks themselves).
    """
    method = method or ("mlffgan" if checkpoint else "coarse-delta")
    method_options = parse_options(options)
    if method == "mlffgan" and checkpoint is None:
        raise InputError("--method mlffgan needs --checkpoint MODEL.ckpt (see `stfusion train`)")
    if method != "mlffgan" and checkpoint is not None:
        raise InputError(f"--checkpoint is for --method mlffgan, not {method}")
    if method == "mlffgan" and method_options:
        raise InputError(
            "--option is for the baseline methods; MLFF-GAN takes its settings from the checkpoint"
        )
    if checkpoint is not None:
        load_checkpoint(checkpoint)  # fail early on a missing or damaged file
    tiles = TileOptions(tile=tile, overlap=(overlap, overlap), batch_size=batch_size)
    reading = read_options(resampling, min_overlap)
    targets = _output_paths(out, coarse_t2, overwrite=overwrite or skip_existing)
    context = distributed.setup(device)
    # MLFF-GAN predictor and degradation factor, built once (fine t1, hence the band count, is shared)
    model: tuple[BatchPredictor, int] | None = None
    for target_coarse, target_path in targets:
        if skip_existing and target_path.exists():
            click.echo(f"skipped {target_path} (exists)")
            continue
        case = scenes.explicit_case(
            coarse_t1=coarse_t1,
            fine_t1=fine_t1,
            coarse_t2=target_coarse,
            masks=explicit_masks(mask, mask_fine_t1, mask_coarse_t1, mask_coarse_t2),
        )
        reader = CaseReader(case, scale=scale, options=reading)
        if reader.reprojected and context.is_main:
            names = ", ".join(str(reader.case.paths()[role]) for role in reader.reprojected)
            click.echo(f"reprojecting {names} onto the grid of {fine_t1} ({resampling} resampling)")
        quality_path = target_path.with_name(f"{target_path.stem}_quality.tif")
        if quality and context.is_main:
            raster.check_writable(quality_path, overwrite=overwrite)
        if method in STREAMING_METHODS:
            if checkpoint is not None:
                if model is None:
                    generator, state = load_generator(checkpoint, bands=reader.bands)
                    model = (
                        generator_batch_predictor(
                            generator, device=context.device, amp=amp, compile=compile_model
                        ),
                        int(state["coarse_factor"]),
                    )
                batch_predictor, coarse_factor = model
            else:
                fusion = workflows.fusion_function(method, **method_options)
                batch_predictor, coarse_factor = method_batch_predictor(fusion), 1
            predict_to_file(
                reader,
                batch_predictor,
                target_path,
                options=tiles,
                coarse_factor=coarse_factor,
                dtype=dtype,
                scale=scale,
                overwrite=overwrite,
                cog=cog,
                split=RankSplit(context.rank, context.world_size),
            )
            distributed.barrier(context)
            if context.distributed and context.is_main:
                join_parts(
                    reader,
                    target_path,
                    options=tiles,
                    world_size=context.world_size,
                    overwrite=overwrite,
                    cog=cog,
                )
            distributed.barrier(context)
        elif context.is_main:
            inputs = workflows.read_case(case, scale=scale, options=reading)
            prediction = workflows.method_predictor(method, **method_options)(inputs)
            with raster.row_writer(
                target_path,
                inputs.reference,
                count=prediction.shape[0],
                dtype=dtype,
                scale=scale,
                overwrite=overwrite,
                band_names=inputs.band_names,
                cog=cog,
            ) as write:
                write(0, prediction)
        if context.is_main:
            click.echo(f"wrote {target_path}")
            if quality:
                flags = np.concatenate(
                    [reader.quality(window) for window in row_windows(reader.height, reader.width)]
                )
                raster.write_quality(
                    quality_path,
                    flags,
                    reader.reference,
                    overwrite=overwrite,
                    description=workflows.QUALITY_DESCRIPTION,
                )
                click.echo(f"wrote {quality_path}")
    distributed.teardown(context)


def _output_paths(out: Path, coarse_t2: tuple[Path, ...], *, overwrite: bool) -> list[tuple[Path, Path]]:
    if len(coarse_t2) == 1 and out.suffix.lower() in scenes.RASTER_SUFFIXES:
        return [(coarse_t2[0], raster.check_writable(out, overwrite=overwrite))]
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: several target dates need --out to be a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths = [(c, out / f"pred_{c.stem}.tif") for c in coarse_t2]
    return [(c, raster.check_writable(p, overwrite=overwrite)) for c, p in paths]


# --------------------------------------------------------------------------------------------------
# evaluate


@cli.command("evaluate")
@click.option("--pred", type=click.Path(path_type=Path), required=True, help="Predicted GeoTIFF.")
@click.option("--truth", type=click.Path(path_type=Path), required=True, help="True fine GeoTIFF.")
@click.option(
    "--ratio",
    type=float,
    default=None,
    help="Fine/coarse pixel-size ratio h/l for ERGAS, e.g. 0.05 for 25 m / 500 m (ERGAS skipped if unset).",
)
@click.option(
    "--mask",
    type=click.Path(path_type=Path),
    default=None,
    help="Raster: nonzero = invalid (on the truth's grid, or georeferenced: nearest resampling).",
)
@click.option("--data-range", type=float, default=1.0, show_default=True, help="PSNR data range R.")
@click.option("--ssim-range", type=float, default=2.0, show_default=True, help="SSIM data_range.")
@click.option("--scale", type=float, default=1e-4, show_default=True, help="Reflectance per stored unit.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write JSON.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Write CSV.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@one_line_errors
def evaluate_command(
    pred: Path,
    truth: Path,
    ratio: float | None,
    mask: Path | None,
    data_range: float,
    ssim_range: float,
    scale: float,
    json_path: Path | None,
    csv_path: Path | None,
    overwrite: bool,
) -> None:
    """Compare a prediction with the truth: per-band metrics table (METRICS.md conventions)."""
    from stfusion import metrics, report

    outputs = [json_path, csv_path, report.sidecar_path(csv_path) if csv_path else None]
    for path in outputs:
        if path is not None:
            raster.check_writable(path, overwrite=overwrite)
    pred_info, truth_info = raster.inspect(pred), raster.inspect(truth)
    if pred_info.shape != truth_info.shape:
        raise InputError(
            f"{pred}: shape {pred_info.shape} (bands, rows, cols) differs from truth {truth} "
            f"{truth_info.shape}"
        )
    mask_info = raster.inspect(mask) if mask is not None else None
    if mask_info is not None:
        scenes.check_mask_grid(mask_info, truth_info)
    for path in (pred, truth):
        check_values(path, scale=scale)
    predicted = raster.read(pred, scale=scale)
    true = raster.read(truth, scale=scale)
    valid = None
    if mask is not None:
        valid = ~raster.read_mask_on_grid(mask, truth_info, resampling="nearest")
    band_names = [n or f"band{i + 1}" for i, n in enumerate(true.info.band_names)]
    result = metrics.compute_metrics(
        predicted.data,
        true.data,
        valid=valid,
        data_range=data_range,
        ssim_data_range=ssim_range,
        ratio=ratio,
        band_names=band_names,
    )
    click.echo(report.format_table(result))
    reports = {pred.stem: result}
    if csv_path is not None:
        report.write_metrics_csv(csv_path, reports)
        click.echo(f"wrote {csv_path}")
    if json_path is not None:
        report.write_metrics_json(json_path, reports)
        click.echo(f"wrote {json_path}")


# --------------------------------------------------------------------------------------------------
# train, test, demo


def _train_config(config_file: Path | None, save_dir: Path, explicit: dict[str, Any]) -> TrainConfig:
    """Defaults < JSON config file < flags given on the command line."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values.update(json.loads(Path(config_file).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{config_file}: not a readable JSON training config ({exc})") from exc
    values.update(explicit)
    values["save_dir"] = str(save_dir)
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"training config: {exc}") from exc


class _Progress:
    """tqdm bar over training steps, with the running losses."""

    def __init__(self, epochs: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=epochs, unit="epoch", dynamic_ncols=True)

    def step(self, step: int, losses: dict[str, float]) -> None:
        self.bar.set_postfix(step=step + 1, g=f"{losses['g_loss']:.4f}", d=f"{losses['d_loss']:.4f}")

    def epoch(self, record: dict[str, float]) -> None:
        self.bar.update(1)
        self.bar.write(
            f"epoch {int(record['epoch'])}: g_loss {record['g_loss']:.4f} d_loss {record['d_loss']:.4f} "
            f"val_mse {record['val_mse']:.6f}"
        )

    def close(self) -> None:
        self.bar.close()


def _run_with_progress(
    data_dir: Path, config: TrainConfig, *, resume: bool, ratio: float | None
) -> workflows.ExperimentResult:
    """Train, select and test (workflows.run_experiment) with a progress bar (on rank 0 only)."""
    context = distributed.setup(config.device)
    progress = _Progress(config.epochs) if context.is_main else None
    try:
        return workflows.run_experiment(
            data_dir,
            config,
            resume=resume,
            ratio=ratio,
            on_step=progress.step if progress else None,
            on_epoch=progress.epoch if progress else None,
            say=click.echo if context.is_main else lambda _: None,
        )
    finally:
        if progress is not None:
            progress.close()
        distributed.teardown(context)


_TRAIN_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "patch_size": "patch_size",
    "patch_stride": "patch_stride",
    "random_crops": "random_crops",
    "coarse_factor": "coarse_factor",
    "seed": "seed",
    "device": "device",
    "amp": "amp",
    "num_workers": "num_workers",
    "date_swap": "date_swap",
    "flips": "flips",
    "residual": "residual",
    "zero_mean_correction": "zero_mean_correction",
    "val_holdout": "val_holdout",
    "resampling": "resampling",
    "min_overlap": "min_overlap",
}


@cli.command("train")
@reading_options
@click.option(
    "--data-dir", type=click.Path(path_type=Path), required=True, help="Paper layout: train/, val/."
)
@click.option("--save-dir", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="JSON training config.")
@click.option("--epochs", type=int, default=200, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--patch-size", type=int, default=256, show_default=True, help="Training patch size.")
@click.option("--patch-stride", type=int, default=200, show_default=True, help="Training patch stride.")
@click.option(
    "--random-crops", type=int, default=0, show_default=True, help="Random crops per case (0: grid)."
)
@click.option("--coarse-factor", type=int, default=16, show_default=True, help="Coarse degradation factor.")
@click.option("--seed", type=int, default=2020, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--amp", is_flag=True, help="bf16 autocast (CUDA only).")
@click.option("--num-workers", type=int, default=0, show_default=True)
@click.option("--date-swap/--no-date-swap", default=True, show_default=True)
@click.option("--flips/--no-flips", default=False, show_default=True, help="Random flips/rotations.")
@click.option("--residual/--no-residual", default=False, show_default=True, help="Learn F2 - (F1 + C2 - C1).")
@click.option(
    "--zero-mean-correction/--no-zero-mean-correction",
    default=False,
    show_default=True,
    help="Residual mode: the correction has zero mean per band and tile (keeps coarse-delta's mean).",
)
@click.option(
    "--val-holdout",
    type=click.FloatRange(0.0, 0.9),
    default=0.0,
    show_default=True,
    help="Validate on this bottom fraction of the rows of each training case instead of val/.",
)
@click.option("--resume", is_flag=True, help="Continue from <save-dir>/last.ckpt.")
@click.option("--ratio", type=float, default=None, help="ERGAS pixel-size ratio for the test table.")
@click.pass_context
@one_line_errors
def train_command(
    ctx: click.Context,
    data_dir: Path,
    save_dir: Path,
    config_file: Path | None,
    resume: bool,
    ratio: float | None,
    **flags: Any,
) -> None:
    """Train MLFF-GAN on DATA_DIR/train, select on val, test the best model on test.

    Data-parallel on several processes with torchrun, e.g. `torchrun --nproc_per_node 4 -m stfusion
    train ...` (--batch-size is the global batch, split over the processes; see the README for
    multi-node and SLURM lines).
    """
    explicit = {
        field: flags[name]
        for name, field in _TRAIN_FLAGS.items()
        if config_file is None or ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    }
    config = _train_config(config_file, save_dir, explicit)
    result = _run_with_progress(data_dir, config, resume=resume, ratio=ratio)
    if result.test_split is None:
        return  # not rank 0 of a torchrun job: rank 0 reports
    click.echo(f"best checkpoint: {result.train.best}")
    for name, path in result.tables.items():
        click.echo(f"{name}: {path}")


@cli.command("test")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--split", default="test", show_default=True, help="Which split of DATA_DIR to predict.")
@click.option("--tile", type=(int, int), default=(1024, 768), show_default=True)
@click.option("--overlap", type=int, default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--baselines", default="coarse-delta,persistence", show_default=True, help="Comma list or ''.")
@click.option("--ratio", type=float, default=None, help="ERGAS pixel-size ratio.")
@click.option("--overwrite", is_flag=True)
@output_state_options
@reading_options
@one_line_errors
def test_command(
    data_dir: Path,
    checkpoint: Path,
    out: Path,
    split: str,
    tile: tuple[int, int],
    overlap: int,
    device: str,
    baselines: str,
    ratio: float | None,
    overwrite: bool,
    skip_existing: bool,
    quality: bool,
    resampling: str,
    min_overlap: float,
) -> None:
    """Predict every case of a split with a checkpoint (and baselines) and write the metric table."""
    model_bands = load_checkpoint(checkpoint)["model"]["bands"]
    cases = scenes.discover(data_dir).split(split) if (Path(data_dir) / split).is_dir() else []
    if not cases:
        raise InputError(f"{data_dir}: no cases in split {split!r}")
    bands = raster.inspect(cases[0].fine_t1).count
    if model_bands != bands:
        raise InputError(
            f"{checkpoint}: checkpoint is for {model_bands} bands, but {cases[0].fine_t1} has {bands}"
        )
    tiles = TileOptions(tile=tile, overlap=(overlap, overlap))
    predictors: dict[str, workflows.Predictor] = {
        "mlffgan": workflows.CheckpointPredictor(checkpoint, tiles=tiles, device=device)
    }
    predictors.update({name: workflows.method_predictor(name) for name in baselines.split(",") if name})
    _make_output_folder(out)
    results = workflows.run_methods(
        cases,
        predictors,
        out_dir=out,
        ratio=ratio,
        overwrite=overwrite,
        skip_existing=skip_existing,
        quality=quality,
        options=read_options(resampling, min_overlap),
    )
    tables = workflows.write_tables(
        results, out, protocol={"data": str(data_dir), "split": split}, overwrite=overwrite or skip_existing
    )
    if "markdown" in tables:
        click.echo(tables["markdown"].read_text())
    for name, path in tables.items():
        click.echo(f"{name}: {path}")


@cli.command("import-reference")
@click.argument("generator_path", type=click.Path(path_type=Path))
@click.option("--discriminator", "discriminator_path", type=click.Path(path_type=Path), default=None)
@click.option("--bands", type=int, required=True)
@click.option("--coarse-factor", type=int, default=16, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--overwrite", is_flag=True)
@one_line_errors
def import_reference_command(
    generator_path: Path,
    discriminator_path: Path | None,
    bands: int,
    coarse_factor: int,
    out: Path,
    overwrite: bool,
) -> None:
    """Convert the MLFF-GAN authors' .pth state dict(s) into a self-describing stfusion checkpoint."""
    import torch

    from stfusion.checkpoint import ModelSpec, save_checkpoint
    from stfusion.models import PatchDiscriminator, ReferenceCheckpointError, import_reference_state_dict

    raster.check_writable(out, overwrite=overwrite)
    spec = ModelSpec(name="mlffgan", bands=bands, kwargs={})
    payload: dict[str, Any] = {
        "model": spec.to_dict(),
        "band_names": [f"band{i + 1}" for i in range(bands)],
        "scale": 1e-4,
        "coarse_factor": coarse_factor,
        "config": {"imported_from": str(generator_path)},
        "epoch": 0,
    }
    parts = [("generator", generator_path, spec.build())]
    if discriminator_path is not None:
        parts.append(("discriminator", discriminator_path, PatchDiscriminator(bands)))
    for part, path, module in parts:
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__})") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            ours = import_reference_state_dict(state, part=part)  # type: ignore[arg-type]
            module.load_state_dict(ours, strict=True)
        except (ReferenceCheckpointError, RuntimeError) as exc:
            raise InputError(f"{path}: does not fit MLFF-GAN {part} with {bands} bands: {exc}") from exc
        payload[part] = module.state_dict()
    save_checkpoint(out, payload)
    click.echo(f"wrote {out}")


# --------------------------------------------------------------------------------------------------
# compare, demo


@cli.command("compare")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--methods", default="persistence,coarse-delta,starfm,fsdaf", show_default=True)
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=click.Path(path_type=Path),
    help="MLFF-GAN checkpoint (repeatable); named mlffgan, mlffgan2, ...",
)
@click.option("--split", default=None, help="Only this split of a paper-layout folder.")
@click.option("--option", "options", multiple=True, help="method.key=value, e.g. fsdaf.scale_factor=8.")
@click.option("--ratio", type=float, default=None, help="ERGAS fine/coarse pixel-size ratio.")
@click.option("--tile", type=(int, int), default=(1024, 768), show_default=True, help="MLFF-GAN tiles.")
@click.option("--overwrite", is_flag=True)
@output_state_options
@reading_options
@one_line_errors
def compare_command(
    data: Path,
    out: Path,
    methods: str,
    checkpoints: tuple[Path, ...],
    split: str | None,
    options: tuple[str, ...],
    ratio: float | None,
    tile: tuple[int, int],
    overwrite: bool,
    skip_existing: bool,
    quality: bool,
    resampling: str,
    min_overlap: float,
) -> None:
    """Run several methods on every case of DATA with known truth; one table and one figure per case."""
    found = scenes.discover(data)
    cases = [c for c in found.cases if c.fine_t2 is not None and (split is None or c.split == split)]
    if not cases:
        raise InputError(f"{data}: no case with a known fine t2 (truth) to compare against")
    per_method: dict[str, dict[str, Any]] = {}
    for key, value in parse_options(options).items():
        method, dot, name = key.partition(".")
        if not dot:
            raise InputError(f"--option {key}: expected method.key=value, e.g. fsdaf.scale_factor=8")
        per_method.setdefault(method.replace("_", "-"), {})[name] = value
    predictors: dict[str, workflows.Predictor] = {
        name: workflows.method_predictor(name, **per_method.get(name, {}))
        for name in methods.split(",")
        if name
    }
    bands = raster.inspect(cases[0].fine_t1).count
    for number, path in enumerate(checkpoints, start=1):
        model_bands = load_checkpoint(path)["model"]["bands"]
        if model_bands != bands:
            raise InputError(
                f"{path}: checkpoint is for {model_bands} bands, but {cases[0].fine_t1} has {bands}"
            )
        tiles = TileOptions(tile=tile, overlap=(64, 64))
        predictors["mlffgan" if number == 1 else f"mlffgan{number}"] = workflows.CheckpointPredictor(
            path, tiles=tiles
        )
    _make_output_folder(out)
    # derived files (figures, tables) are rewritten when resuming with --skip-existing
    rewrite = overwrite or skip_existing
    for case in cases:
        raster.check_writable(out / f"{case.name}.png", overwrite=rewrite)
    reading = read_options(resampling, min_overlap)

    def draw(inputs: workflows.CaseInputs, case_results: dict[str, workflows.MethodResult]) -> None:
        if inputs.fine_t2 is None:
            return
        figure = out / f"{inputs.case.name}.png"
        predictions = {m: r.prediction for m, r in case_results.items()}
        rgb = workflows.default_rgb(inputs.band_names)
        workflows.quicklook(figure, inputs, predictions, rgb_bands=rgb)
        click.echo(f"figure: {figure}")

    results = workflows.run_methods(
        cases,
        predictors,
        out_dir=out,
        ratio=ratio,
        overwrite=overwrite,
        skip_existing=skip_existing,
        quality=quality,
        options=reading,
        on_case=draw,
    )
    protocol = {
        "data": str(data),
        "cases": ", ".join(c.name for c in cases),
        "ergas ratio": ratio,
        "options": dict(per_method),
        "resampling": resampling,
    }
    tables = workflows.write_tables(results, out, protocol=protocol, stem="comparison", overwrite=rewrite)
    click.echo(tables["markdown"].read_text())


#: Demo settings for the built-in sample, chosen to finish in a few minutes on a 2-core CPU.
DEMO_CONFIG: dict[str, Any] = {
    "epochs": 60,
    "lr": 4e-4,
    "patch_size": 128,
    "random_crops": 16,  # per epoch the same 16 seeded crops, each seen under a random flip/rotation
    "flips": True,
    # Measured on the sample (README): no extra degradation (factor 1) beat factor 8, whose nearest-then-
    # bicubic step re-blurs MODIS that is already smoothly resampled on the 50 m grid.
    "coarse_factor": 1,
    "residual": True,
    # Chosen on a spatial hold-out of the training pair, never on the test date (README): the correction
    # keeps the coarse-delta mean (the offset of the training dates does not carry over to other dates),
    # no date swap (the held-out date is a forward prediction), no dropout.
    "zero_mean_correction": True,
    "date_swap": False,
    "dropout": 0.0,
    "val_holdout": 0.36,  # validate on the bottom 90 of the 250 rows of the training pair, not on val/
    "val_tile": (256, 256),
    "val_overlap": (32, 32),
}


@cli.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True)
@click.option("--epochs", type=int, default=DEMO_CONFIG["epochs"], show_default=True)
@click.option(
    "--residual/--no-residual",
    default=DEMO_CONFIG["residual"],
    show_default=True,
    help="Learn the correction to F1 + C2 - C1 (ours) instead of F2 itself (the paper's).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder's files.")
@one_line_errors
def demo_command(out: Path, epochs: int, residual: bool, overwrite: bool) -> None:
    """Train MLFF-GAN briefly on the built-in CIA sample and compare it with the baselines."""
    import time

    from stfusion.sample import SAMPLE_ERGAS_RATIO, SAMPLE_ROOT

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    config = TrainConfig(save_dir=str(out / "run"), **{**DEMO_CONFIG, "epochs": epochs, "residual": residual})
    click.echo(
        f"training MLFF-GAN on {SAMPLE_ROOT / 'train'} for {epochs} epochs (CPU); test date 2001-11-02"
    )
    result = _run_with_progress(SAMPLE_ROOT, config, resume=False, ratio=SAMPLE_ERGAS_RATIO)
    case_name, methods = next(iter(result.test_results.items()))
    prediction = out / "prediction_mlffgan.tif"
    raster.check_writable(prediction, overwrite=True)
    source = methods["mlffgan"].output
    assert source is not None
    prediction.write_bytes(source.read_bytes())
    case = next(c for c in scenes.discover(SAMPLE_ROOT).cases if c.name == case_name)
    inputs = workflows.read_case(case)
    figure = workflows.quicklook(
        out / "quicklook.png",
        inputs,
        {m: r.prediction for m, r in methods.items()},
        rgb_bands=workflows.default_rgb(inputs.band_names),
    )
    click.echo(result.tables["markdown"].read_text())
    click.echo(f"prediction: {prediction}\nquick-look: {figure}\ntables: {result.tables['markdown'].parent}")
    click.echo(f"demo finished in {time.perf_counter() - start:.0f} s")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="stfusion")

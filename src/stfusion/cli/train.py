"""``stfusion train`` and ``stfusion test``: train MLFF-GAN on a data folder, score a checkpoint."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stfusion import distributed, fusion, recipes, scenes, workflows
from stfusion.cli.options import (
    READING_PARAMETERS,
    check_device,
    device_option,
    load_checkpoint,
    make_output_folder,
    make_tiles,
    one_line_errors,
    output_state_options,
    progress,
    ratio_option,
    reading_options,
    reading_values_options,
    say,
    tile_options,
)
from stfusion.errors import InputError
from stfusion.inputs import ReadOptions, band_count, band_names

if TYPE_CHECKING:
    from stfusion.train import TrainConfig

RESUME_HINT = (
    "rerun with --resume to continue from the last finished epoch (last.ckpt; from the start if none)"
)

#: Command-line flags of `train` that map to TrainConfig fields of the same name.
TRAIN_FLAGS: tuple[str, ...] = (
    "epochs",
    "batch_size",
    "lr",
    "patch_size",
    "patch_stride",
    "random_crops",
    "coarse_factor",
    "seed",
    "device",
    "amp",
    "num_workers",
    "date_swap",
    "flips",
    "residual",
    "zero_mean_correction",
    "per_band",
    "val_holdout",
)


def train_config(
    config_file: Path | None,
    save_dir: Path,
    explicit: dict[str, Any],
    recipe: str | None = None,
    *,
    fill: dict[str, Any] | None = None,
    flag_of: dict[str, str] | None = None,
) -> TrainConfig:
    """Defaults < recipe < JSON config file < flags given on the command line (``explicit``; ``fill``:
    values only for the keys the recipe and file leave unset). InputError naming a bad key and where it
    came from (``flag_of``: key -> the command-line option that gave it)."""
    from stfusion.train import TrainConfig  # imports torch: only the commands that train need it

    values: dict[str, Any] = recipes.recipe(recipe) if recipe else {}
    if config_file is not None:
        try:
            loaded = json.loads(Path(config_file).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{config_file}: not a readable JSON training config ({exc})") from exc
        if not isinstance(loaded, dict):
            raise InputError(f"{config_file}: a training config is a JSON object of options, not {loaded!r}")
        loaded.pop("world_size", None)  # a run's config.json records it beside the options
        values.update(loaded)
    flag_of = dict(flag_of or {})
    kept = []
    for name, value in (fill or {}).items():
        if values.get(name) is None:
            values[name] = value
        elif _plain(value) != _plain(values[name]):  # the config's own value stays: said, not blamed on it
            kept.append(
                f"{flag_of.pop(name, name)}: {name} kept from {config_file or recipe}: {values[name]}"
            )
    values.update(explicit)
    values["save_dir"] = str(save_dir)
    source = config_file if config_file is not None else "training options"
    try:
        config = TrainConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        key = str(exc).split(":", 1)[0].split(".", 1)[0]
        raise InputError(f"{flag_of.get(key) or source}: {exc}") from exc
    try:  # a device from a config file gets the --device flag's check
        check_device(config.device)
    except click.BadParameter as exc:
        raise InputError(f"{flag_of.get('device') or source}: device {exc.message}") from exc
    for line in kept:
        say(line)
    return config


#: ``--test-date`` of train and test: the same option, so that both split a flat folder alike.
test_date_option = click.option(
    "--test-date",
    "test_dates",
    multiple=True,
    type=click.DateTime(["%Y-%m-%d", "%Y%m%d"]),
    help="Flat folders: target date(s) held out for the test, by train and test alike [default: the latest "
    "with a fine image].",
)


@contextmanager
def training_progress(epochs: int, enabled: bool) -> Iterator[dict[str, Any]]:
    """Callbacks for run_experiment: a bar over epochs with the running losses, one line per epoch."""
    if not enabled:
        yield {}
        return
    with progress(epochs, "training", unit="epoch") as bar:

        def step(step: int, losses: dict[str, float]) -> None:
            bar.set_postfix(step=step + 1, g=f"{losses['g_loss']:.4f}", d=f"{losses['d_loss']:.4f}")

        def epoch(record: dict[str, float]) -> None:
            bar.update(1)
            bar.write(
                f"epoch {int(record['epoch'])}: g_loss {record['g_loss']:.4f} d_loss {record['d_loss']:.4f} "
                f"val_mse {record['val_mse']:.6f}"
            )

        yield {"on_step": step, "on_epoch": epoch}


def run_training(
    data_dir: Path,
    config: TrainConfig,
    *,
    resume: bool,
    overwrite: bool,
    ratio: float | None,
    test_dates: tuple[dt.date, ...] = (),
) -> workflows.ExperimentResult:
    """Train, select and test (workflows.run_experiment) with a progress bar on rank 0."""
    context = distributed.setup(config.device)
    try:
        with training_progress(config.epochs, context.is_main) as callbacks:
            return workflows.run_experiment(
                data_dir,
                config,
                resume=resume,
                overwrite=overwrite,
                test_dates=test_dates,
                ratio=ratio,
                context=context,
                say=say if context.is_main else lambda _: None,
                **callbacks,
            )
    finally:
        distributed.teardown(context)


@click.command("train")
@reading_values_options
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option(
    "--data-dir", type=click.Path(path_type=Path), hidden=True, help="Same as DATA (the paper's name)."
)
@test_date_option
@click.option("--save-dir", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="JSON training config.")
@click.option(
    "--recipe",
    type=click.Choice(list(recipes.RECIPES)),
    default=None,
    help="A documented set of settings (see docs/training.md); options given here win [default: paper].",
)
@click.option("--epochs", type=click.IntRange(min=1), default=200, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Global batch.")
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=2e-4,
    show_default=True,
    help="Adam learning rate.",
)
@click.option(
    "--patch-size", type=click.IntRange(min=16), default=256, show_default=True, help="Training patch size."
)
@click.option(
    "--patch-stride",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Stride of the patch grid.",
)
@click.option(
    "--random-crops",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Crops per case (0: grid).",
)
@click.option(
    "--coarse-factor",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Coarse degradation factor.",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=2020, show_default=True, help="Seed of every random choice."
)
@device_option
@click.option("--amp", is_flag=True, help="bf16 autocast (CUDA only).")
@click.option(
    "--num-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="DataLoader worker processes.",
)
@click.option(
    "--date-swap/--no-date-swap",
    default=True,
    show_default=True,
    help="The paper's augmentation: also train on each pair backward (t2 -> t1).",
)
@click.option("--flips/--no-flips", default=False, show_default=True, help="Random flips/rotations.")
@click.option("--residual/--no-residual", default=False, show_default=True, help="Learn F2 - (F1 + C2 - C1).")
@click.option(
    "--zero-mean-correction/--no-zero-mean-correction",
    default=False,
    show_default=True,
    help="Residual mode: the correction has zero mean per band and tile (keeps coarse-delta's mean).",
)
@click.option(
    "--per-band/--no-per-band",
    default=False,
    show_default=True,
    help="Train one one-band network on every band of every case (cases may differ in bands); it "
    "predicts any band count, band by band.",
)
@click.option(
    "--val-holdout",
    type=click.FloatRange(0.0, 0.9),
    default=0.0,
    help="Validate on this bottom fraction of the rows of each training case instead of val/ "
    "[default: none with val/ pair folders; 0.25 for a flat folder, or the --recipe's value].",
)
@click.option("--resume", is_flag=True, help="Continue the run in --save-dir from its last.ckpt.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --save-dir with a new one.")
@ratio_option
@click.pass_context
@one_line_errors(RESUME_HINT)
def train_command(
    ctx: click.Context,
    data: Path | None,
    data_dir: Path | None,
    test_dates: tuple[dt.datetime, ...],
    save_dir: Path,
    config_file: Path | None,
    recipe: str | None,
    resume: bool,
    overwrite: bool,
    ratio: float | None,
    reading: dict[str, Any],
    **flags: Any,
) -> None:
    """Train MLFF-GAN on the cases of DATA, select the best epoch, test it; write a run folder.

    DATA is a flat folder of fine_YYYYMMDD.tif / coarse_YYYYMMDD.tif (split by date: the latest target
    date with a fine image is the test, the others train, validation on held-out rows) or the paper's layout
    (train/, val/, test/ pair folders). Data-parallel on several processes with torchrun, e.g.
    `torchrun --nproc_per_node 4 -m stfusion train ...` (--batch-size is the global batch).
    """
    folder = data or data_dir
    if folder is None:
        raise InputError("give the data folder: stfusion train DATA --save-dir RUN")
    if resume and overwrite:
        raise InputError("--resume continues the run in --save-dir, --overwrite replaces it: give one")
    recorded = save_dir / "config.json"
    if resume and config_file is None and recipe is None and recorded.is_file():
        config_file = recorded  # `--resume` alone continues the run as it was started (typed options win)
    explicit, fill, flag_of = _command_line_values(ctx, flags, reading, files=bool(config_file or recipe))
    config = train_config(config_file, save_dir, explicit, recipe, fill=fill, flag_of=flag_of)
    if ratio is None and reading["coarse_ratio"] is not None:  # ERGAS of the test step
        ratio = 1 / reading["coarse_ratio"]
    dates = tuple(d.date() for d in test_dates)
    result = run_training(folder, config, resume=resume, overwrite=overwrite, ratio=ratio, test_dates=dates)
    if result.test_split is None:
        return  # not rank 0 of a torchrun job: rank 0 reports
    say(f"best checkpoint: {result.train.best}")
    for name, path in result.tables.items():
        say(f"{name}: {path}")


def _plain(value: Any) -> Any:
    """A config value as JSON and the command line both give it (band lists of strings)."""
    return [str(v) for v in value] if isinstance(value, list | tuple) else value


#: reading options that set both the fine and the coarse value (--scale sets fine_scale and coarse_scale)
_BOTH = {
    "fine_scale": "scale",
    "coarse_scale": "scale",
    "fine_offset": "offset",
    "coarse_offset": "offset",
    "fine_bands": "bands",
    "coarse_bands": "bands",
}


def _command_line_values(
    ctx: click.Context, flags: dict[str, Any], reading: dict[str, Any], *, files: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The training config values of the command line, for :func:`train_config`: those that override a
    recipe or --config (every option when neither is given; else the options typed), those that only
    fill what they leave unset (the coarse key of --scale, --offset and --bands: a config's
    coarse_bands, e.g. MOD09GA's order, stays; their fine key is set as typed), and the option that gave
    each key (named in errors)."""
    typed = {
        name
        for name in (*TRAIN_FLAGS, *READING_PARAMETERS)
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    }
    given = typed if files else {*TRAIN_FLAGS, *READING_PARAMETERS}
    explicit = {name: flags[name] for name in TRAIN_FLAGS if name in given}
    flag_of = {name: "--" + name.replace("_", "-") for name in explicit if name in typed}
    fill: dict[str, Any] = {}
    for name in ("resampling", "min_overlap", *_BOTH):
        short = _BOTH.get(name)
        if name in given:
            explicit[name] = reading[name]
        elif short in given:
            (fill if name.startswith("coarse_") else explicit)[name] = reading[name]
        else:
            continue
        option = name if name in typed else short if short in typed else None
        if option is not None:
            flag_of[name] = "--" + option.replace("_", "-")
    return explicit, fill, flag_of


@click.command("test")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="Trained model.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--split",
    default="test",
    show_default=True,
    help="Which split of DATA_DIR to predict (a flat folder is split by date as `train` splits it).",
)
@test_date_option
@click.option("--baselines", default="coarse-delta,persistence", show_default=True, help="Comma list or ''.")
@ratio_option
@tile_options
@device_option
@output_state_options
@reading_options
@one_line_errors("finished outputs are complete; rerun with --skip-existing to do the rest")
def test_command(
    data_dir: Path,
    checkpoint: Path,
    out: Path,
    split: str,
    test_dates: tuple[dt.datetime, ...],
    baselines: str,
    ratio: float | None,
    tile: tuple[int, int],
    overlap: int,
    batch_size: int,
    device: str,
    overwrite: bool,
    skip_existing: bool,
    clip: bool,
    quality: bool,
    reading: ReadOptions,
) -> None:
    """Predict every case of a split with a checkpoint (and baselines) and write the metric table."""
    model = load_checkpoint(checkpoint)
    dates = tuple(d.date() for d in test_dates)
    found = scenes.discover(data_dir)
    cases = scenes.split_of(found, split, test_dates=dates)
    if not cases:
        raise InputError(f"{data_dir}: no cases in split {split!r}")
    if all(case.fine_t2 is None for case in cases):
        raise InputError(
            f"{data_dir}: no case of split {split!r} has a fine image of its target date to score against "
            "(choose another with --test-date, or use `stfusion predict`)"
        )
    first = cases[0].fine_t1
    model.check_bands_of_scene(band_count(first, reading), first, band_names(first, reading))
    runtime = {"device": device, "tiles": make_tiles(tile, overlap, batch_size)}
    preparers = {"mlffgan": fusion.get("mlffgan").preparer(checkpoint=model, runtime=runtime)}
    hint = (  # compare --pairs 2 makes two-pair cases of flat folders only
        " (a split's cases; `stfusion compare DATA --pairs 2 --checkpoint ...` makes two-pair ones)"
        if found.layout == "flat"
        else ""
    )
    for name in (n for n in baselines.split(",") if n):
        fusion.get(name).check_pairs((len(case.pairs) for case in cases), hint=hint)
        preparers[name] = fusion.get(name).preparer()
    readers = workflows.case_readers(cases, reading)
    make_output_folder(out)
    with progress(len(cases) * len(preparers), "test", unit="run") as bar:
        results = workflows.run_methods(
            cases,
            preparers,
            out_dir=out,
            ratio=ratio,
            reading=reading,
            output=workflows.OutputOptions(
                overwrite=overwrite, skip_existing=skip_existing, quality=quality, clip=clip
            ),
            on_case=workflows.figure_reporter(out, say),
            on_method=lambda case, method: bar.update(1),
            readers=readers,
        )
    protocol: dict[str, object] = {"data": str(data_dir), "split": split, "checkpoint": str(checkpoint)}
    seen = {
        (c.name, "mlffgan"): "TRAINED ON THIS CASE"
        for c in cases
        if model.has_seen([c.fine_t2 or c.coarse_t2])
    }
    if seen:
        protocol["note"] = "a checkpoint scored on a case it was trained on (marked) is no fair test"
    tables = workflows.write_tables(
        results, out, protocol=protocol, overwrite=overwrite or skip_existing, notes=seen
    )
    if "markdown" in tables:
        say(tables["markdown"].read_text())
    for name, path in tables.items():
        say(f"{name}: {path}")

"""What every command shares: the one-line error wrapper, option groups, option checks, progress bars.

Commands parse, call a job (:mod:`stfusion.workflows`, :mod:`stfusion.train`) and print; the option groups
here keep one spelling and one check per option across commands, and every bad value is refused where it
is parsed (click types and ranges), before any work.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from stfusion import raster
from stfusion.errors import InputError, StfusionError
from stfusion.inputs import ReadOptions
from stfusion.scenes import MIN_COARSE_OVERLAP
from stfusion.tiling import TileOptions

if TYPE_CHECKING:
    from stfusion.checkpoint import Checkpoint

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)
SKIP_HINT = "finished outputs are complete; rerun with --skip-existing to do the rest"


def one_line_errors(hint: str = "outputs written so far are complete") -> Callable[[F], F]:
    """Report StfusionError as ``error: <message>`` on stderr and exit 2 (no traceback).

    Ctrl-C gives one line too (exit 130): every output is written atomically, so what exists is
    complete, and ``hint`` says how to continue.
    """

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _CREATED_FOLDERS.clear()
            try:
                return command(*args, **kwargs)
            except StfusionError as exc:
                _remove_empty_created_folders()
                click.echo(f"error: {exc}", err=True)
                sys.exit(EXIT_INPUT_ERROR)
            except KeyboardInterrupt:
                _remove_empty_created_folders()
                click.echo(f"interrupted: {hint}", err=True)
                sys.exit(EXIT_INTERRUPTED)

        return wrapper  # type: ignore[return-value]

    return decorate


def key_values(pairs: Sequence[str], flag: str = "--option") -> list[tuple[str, str]]:
    """``key=value`` strings to (key, value) pairs; InputError naming a malformed one."""
    parsed = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} {pair!r}: expected key=value, e.g. {flag} window_size=31")
        parsed.append((key.strip(), value.strip()))
    return parsed


# --------------------------------------------------------------------------------------------------
# option groups


def _apply(command: F, options: Sequence[Callable[[F], F]]) -> F:
    for option in reversed(options):
        command = option(command)
    return command


#: The parameters :func:`reading_options` adds; the command receives them as one ``reading`` argument.
READING_PARAMETERS: tuple[str, ...] = (
    "resampling",
    "min_overlap",
    "scale",
    "fine_scale",
    "coarse_scale",
    "offset",
    "fine_offset",
    "coarse_offset",
    "bands",
    "coarse_bands",
    "coarse_ratio",
)


def reading_options(command: F) -> F:
    """How input files become pixels: resampling, footprint overlap, scales and offsets of files without
    tags.

    The command receives one keyword argument ``reading`` (:class:`~stfusion.inputs.ReadOptions`).
    """

    def build(values: dict[str, Any]) -> ReadOptions:
        try:
            return read_options(**values)
        except StfusionError as exc:  # e.g. --fine-offset nan: a usage error, before any work
            raise click.UsageError(str(exc)) from None

    return _reading(command, build)


def reading_values_options(command: F) -> F:
    """:func:`reading_options` for a command that merges them with a config file before checking them
    (``train``: an offset on the command line may belong to a scale in ``--config``). The command
    receives ``reading``, a dict of :class:`~stfusion.inputs.ReadOptions` field values (per-image
    values resolved as in :func:`read_options`), unchecked."""
    return _reading(command, lambda values: read_values(**values))


def _reading(command: F, build: Callable[[dict[str, Any]], Any]) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["reading"] = build({name: kwargs.pop(name) for name in READING_PARAMETERS})
        return command(*args, **kwargs)

    scale_help = "Reflectance per stored unit of {} files without GDAL scale/offset tags [default: auto]."
    offset_help = (
        "Reflectance added after --{0}-scale (reflectance = value x scale + offset) for {0} files without "
        "GDAL scale/offset tags{1}; needs --{0}-scale or --scale [default: 0]."
    )
    products = (
        ", e.g. --fine-scale 2.75e-5 --fine-offset -0.2 for Landsat Collection 2 Level-2 (USGS GeoTIFFs "
        "come without tags), --fine-scale 1e-4 --fine-offset -0.1 for Sentinel-2 L2A (baseline 04.00+)"
    )
    return _apply(
        cast(F, wrapper),
        [
            click.option(
                "--scale",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="Reflectance per stored unit of every input without GDAL scale/offset tags, e.g. "
                "0.0001 for x 10000 integers, 1 for reflectance floats [default: auto per file: "
                "integers 0.0001, floats within 0..1.5 1].",
            ),
            click.option(
                "--fine-scale",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help=scale_help.format("fine"),
            ),
            click.option(
                "--coarse-scale",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help=scale_help.format("coarse"),
            ),
            click.option(
                "--offset",
                type=float,
                default=None,
                help="Reflectance added after --scale (reflectance = value x scale + offset) for every input "
                "without GDAL scale/offset tags; needs a scale for each input (--scale, or --fine-scale and "
                "--coarse-scale) [default: 0].",
            ),
            click.option(
                "--fine-offset", type=float, default=None, help=offset_help.format("fine", products)
            ),
            click.option("--coarse-offset", type=float, default=None, help=offset_help.format("coarse", "")),
            click.option(
                "--bands",
                default=None,
                help="Bands to use, in order, by number (1-based) or description, e.g. 2,3,4 or "
                "green,red,nir; also for coarse images unless --coarse-bands [default: all].",
            ),
            click.option(
                "--coarse-ratio",
                type=click.FloatRange(min=1.0),
                default=None,
                help="Coarse / fine pixel size, e.g. 16 for 480 m MODIS and 30 m Landsat: used by FSDAF and "
                "ERGAS [default: from coarse images at their native resolution, else estimated by the "
                "method that needs it].",
            ),
            click.option(
                "--coarse-bands",
                default=None,
                help="Bands of the coarse images matching --bands, e.g. 3,4,1,2,6,7 for MOD09GA (red, nir, "
                "blue, green, swir1, swir2 order) against Landsat 1-5,7.",
            ),
            click.option(
                "--resampling",
                type=click.Choice(raster.RESAMPLING_METHODS),
                default="bilinear",
                show_default=True,
                help="Resampling of coarse images (and masks) not on the fine grid, e.g. MODIS at 500 m.",
            ),
            click.option(
                "--min-overlap",
                type=click.FloatRange(0.0, 1.0),
                default=MIN_COARSE_OVERLAP,
                show_default=True,
                help="Fraction of the fine grid a coarse image's footprint must cover.",
            ),
        ],
    )


def read_options(**values: Any) -> ReadOptions:
    """ReadOptions from the values of :func:`reading_options` (the keywords of :func:`read_values`),
    checked."""
    return ReadOptions(**read_values(**values))


def read_values(
    resampling: str = "bilinear",
    min_overlap: float = MIN_COARSE_OVERLAP,
    scale: float | None = None,
    fine_scale: float | None = None,
    coarse_scale: float | None = None,
    offset: float | None = None,
    fine_offset: float | None = None,
    coarse_offset: float | None = None,
    bands: str | None = None,
    coarse_bands: str | None = None,
    coarse_ratio: float | None = None,
) -> dict[str, Any]:
    """The :class:`ReadOptions` field values of the :func:`reading_options` values, not yet checked:
    --fine/--coarse-scale win over --scale, --fine/--coarse-offset over --offset, --coarse-bands over
    --bands."""
    fine_bands = band_list(bands)
    return {
        "resampling": resampling,
        "min_overlap": min_overlap,
        "fine_scale": fine_scale if fine_scale is not None else scale,
        "coarse_scale": coarse_scale if coarse_scale is not None else scale,
        "fine_offset": fine_offset if fine_offset is not None else offset,
        "coarse_offset": coarse_offset if coarse_offset is not None else offset,
        "fine_bands": fine_bands,
        "coarse_bands": band_list(coarse_bands) if coarse_bands is not None else fine_bands,
        "coarse_ratio": coarse_ratio,
    }


def band_list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise click.BadParameter(f"{text!r}: give bands as a comma list, e.g. 1,2,3 or green,red,nir")
    return items


def ratio_option(command: F) -> F:
    """``--ratio`` (hidden; older name): ERGAS's fine/coarse pixel-size ratio h/l = 1 / --coarse-ratio."""
    return click.option(
        "--ratio",
        type=click.FloatRange(min=0, max=1, min_open=True),
        default=None,
        hidden=True,
        help="ERGAS fine/coarse pixel-size ratio (older name: give --coarse-ratio, its inverse).",
    )(command)


def _check_tile(ctx: click.Context, param: click.Parameter, value: tuple[int, int]) -> tuple[int, int]:
    if min(value) < 16:
        raise click.BadParameter(f"{value[0]} {value[1]}: tiles need at least 16 x 16 pixels")
    return value


def tile_options(command: F) -> F:
    """``--tile``, ``--overlap`` and ``--batch-size`` of MLFF-GAN's tiled prediction."""
    return _apply(
        command,
        [
            click.option(
                "--tile",
                type=(click.IntRange(min=1), click.IntRange(min=1)),
                default=(1024, 768),
                show_default=True,
                callback=_check_tile,
                help="MLFF-GAN tile size: rows cols (>= 16 each).",
            ),
            click.option(
                "--overlap",
                type=click.IntRange(min=0),
                default=64,
                show_default=True,
                help="MLFF-GAN tile overlap in pixels (>= 0, less than the tile).",
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="MLFF-GAN tiles per batch.",
            ),
        ],
    )


def load_checkpoint(path: Path) -> Checkpoint:
    """:func:`stfusion.checkpoint.load`, imported here on first use: torch (seconds to import) is
    loaded only by the commands that read a model."""
    from stfusion.checkpoint import load

    return load(path)


def make_tiles(tile: tuple[int, int], overlap: int, batch_size: int = 1) -> TileOptions:
    if overlap >= min(tile):
        raise click.BadParameter(f"{overlap}: the overlap must be less than the tile {tile[0]} x {tile[1]}")
    return TileOptions(tile=tile, overlap=(overlap, overlap), batch_size=batch_size)


def device_option(command: F) -> F:
    return click.option(
        "--device",
        default="cpu",
        show_default=True,
        callback=lambda ctx, param, value: check_device(value),
        help="Where MLFF-GAN runs: cpu, cuda, cuda:1 ...",
    )(command)


def check_device(device: str) -> str:
    """A usable torch device name, or a one-line usage error saying why not (before any work)."""
    if device == "cpu":  # the default: no need to import torch (seconds) for the classical methods
        return device
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise click.BadParameter(f"{device!r}: not a device name (cpu, cuda, cuda:1, ...)") from None
    if parsed.type == "cpu":
        return device
    if parsed.type != "cuda":
        raise click.BadParameter(f"{device!r}: only cpu and cuda devices are supported")
    if not torch.cuda.is_available():
        build = "a CPU-only PyTorch build" if torch.version.cuda is None else "no visible GPU"
        raise click.BadParameter(
            f"{device!r}: CUDA is not available here ({build}); install a CUDA build of PyTorch "
            "(https://pytorch.org/get-started/locally/) or use --device cpu"
        )
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise click.BadParameter(f"{device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def mask_options(command: F) -> F:
    """``--mask`` and ``--mask-<role>`` (nonzero = invalid pixel); see :func:`explicit_masks`."""
    options = [
        click.option(
            "--mask",
            type=click.Path(path_type=Path),
            default=None,
            help="Mask for every input image (nonzero = invalid); on the fine grid or georeferenced.",
        )
    ]
    for role in ("fine_t1", "coarse_t1", "coarse_t2", "fine_t3", "coarse_t3"):
        options.append(
            click.option(
                "--mask-" + role.replace("_", "-"),
                type=click.Path(path_type=Path),
                default=None,
                help=f"Mask of the {role.replace('_', ' ')} image.",
            )
        )
    return _apply(command, options)


def explicit_masks(mask: Path | None, **own: Path | None) -> dict[str, Path]:
    """Role -> mask file from :func:`mask_options` values (a role's own mask wins over --mask)."""
    roles = [name.removeprefix("mask_") for name in own]
    masks = {role: mask for role in roles} if mask is not None else {}
    masks.update({name.removeprefix("mask_"): path for name, path in own.items() if path is not None})
    return masks


def output_state_options(command: F) -> F:
    """``--overwrite``, ``--skip-existing`` (resume an interrupted run; not both) and ``--quality``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        one_output_state(kwargs["overwrite"], kwargs["skip_existing"])
        return command(*args, **kwargs)

    return _apply(
        cast(F, wrapper),
        [
            click.option("--overwrite", is_flag=True, help="Replace existing outputs (never an input)."),
            click.option(
                "--skip-existing",
                is_flag=True,
                help="Keep outputs that exist and are readable (resume an interrupted run).",
            ),
            click.option(
                "--clip", is_flag=True, help="Clip predictions to the valid reflectance range 0..1."
            ),
            click.option(
                "--quality",
                is_flag=True,
                help="Also write a uint8 quality raster beside each prediction (<name>_quality.tif; "
                "compare and test: quality.tif in each case folder): 0 = all inputs valid, else the sum of "
                "1 (fine t1 invalid), 2 (coarse t1), 4 (coarse t2), 8 (coarse t3), 16 (fine t3).",
            ),
        ],
    )


def one_output_state(overwrite: bool, skip_existing: bool) -> None:
    """Usage error when both --overwrite and --skip-existing are given."""
    if overwrite and skip_existing:
        raise click.UsageError("give --overwrite (redo the outputs) or --skip-existing (keep them), not both")


#: Output folders this command created (deepest first): removed again if it stops on an error or
#: Ctrl-C before writing anything into them (see :func:`one_line_errors`).
_CREATED_FOLDERS: list[Path] = []


def _remove_empty_created_folders() -> None:
    for folder in _CREATED_FOLDERS:
        if folder.is_dir():  # its empty subfolders (e.g. a case's), then itself if nothing was written
            for inner, _, _ in os.walk(folder, topdown=False):
                with contextlib.suppress(OSError):  # not empty: an output was written there
                    os.rmdir(inner)
    _CREATED_FOLDERS.clear()


def make_output_folder(out: Path) -> Path:
    """Create an output folder (and parents); InputError if impossible. A folder created here is
    removed again, if still empty, when the command stops on an error or Ctrl-C."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; --out needs a folder")
    missing = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror})") from exc
    _CREATED_FOLDERS.extend(missing)
    if not os.access(out, os.W_OK):
        raise InputError(f"{out}: output folder is not writable")
    return out


# --------------------------------------------------------------------------------------------------
# progress


def quiet() -> bool:
    """Whether the user asked for no progress output (``stfusion -q``)."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if isinstance(ctx.obj, dict) and "quiet" in ctx.obj:
            return bool(ctx.obj["quiet"])
        ctx = ctx.parent
    return False


@contextmanager
def progress(total: int, description: str, unit: str = "it") -> Iterator[Any]:
    """A tqdm bar on stderr, shown only on a terminal and never with -q (so logs stay clean)."""
    from tqdm import tqdm

    disable = True if quiet() else None  # None: tqdm disables itself when stderr is not a terminal
    bar = tqdm(total=total, desc=description, unit=unit, disable=disable, dynamic_ncols=True, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def say(text: str) -> None:
    """A result line on stdout (the final line per output, tables); not silenced by -q."""
    click.echo(text)

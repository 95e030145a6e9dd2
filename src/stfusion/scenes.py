"""Name the inputs of fusion cases: which file is coarse t1, fine t1, coarse t2 and fine t2.

Three ways to describe cases, all producing :class:`FusionCase` records (paths and dates, no pixels):

- the MLFF-GAN paper layout ``D/{train,val,test}/<YYYY_DOY_MMDD>-<YYYY_DOY_MMDD>/``: the first date is
  the reference t1, the second the target t2; in each pair folder a file whose name contains
  ``YYYY`` + ``MMDD`` (e.g. ``20011007``) is the fine image of that date and one whose name contains
  ``YYYY`` + ``DOY`` (e.g. ``2001281``) is the coarse image (CIA/LGC file names);
- a flat folder of ``fine_YYYYMMDD.tif`` / ``coarse_YYYYMMDD.tif`` files, paired by date (each coarse
  date with the nearest earlier date that has both images, or explicit date pairs);
- explicit file arguments (:func:`explicit_case`).

A file named ``<image stem>_mask.tif`` beside an image is that image's mask (any nonzero value =
invalid pixel, e.g. a cloud or QA raster); it is attached to the case (:attr:`FusionCase.masks`).

Problems (missing, duplicated or ambiguous files, unparseable names, dates that contradict each other,
fine images off fine t1's grid, coarse images that cannot be placed on it) raise
:class:`~stfusion.errors.InputError` naming the folder or file and what was expected.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from stfusion import raster
from stfusion.atomic import copy_files
from stfusion.errors import InputError

RASTER_SUFFIXES: frozenset[str] = frozenset({".tif", ".tiff"})
SPLITS: tuple[str, ...] = ("train", "val", "test")
_PAIR_FOLDER = re.compile(r"^(\d{4})_(\d{3})_(\d{4})-(\d{4})_(\d{3})_(\d{4})$")
_FLAT_FILE = re.compile(r"^(fine|coarse)_(\d{8}|\d{4}-\d{2}-\d{2})$", re.IGNORECASE)
#: Suffix of a mask file's stem: ``X_mask.tif`` is the mask of ``X.tif``.
MASK_SUFFIX = "_mask"
#: Dates of one acquisition may differ by this many days (MODIS 8-day composites; CIA's Landsat date is
#: one day before the MODIS day of year); more is a contradiction.
DATE_TOLERANCE_DAYS = 8
#: Coarse images must cover at least this fraction of the fine grid.
MIN_COARSE_OVERLAP = 0.5
#: GeoTIFF metadata tags holding an acquisition date (Landsat MTL, MODIS, generic), compared with the
#: case's dates when present.
DATE_TAGS: tuple[str, ...] = (
    "ACQUISITION_DATE",
    "DATE_ACQUIRED",
    "ACQUISITIONDATE",
    "RANGEBEGINNINGDATE",
    "SENSING_DATE",
)
#: The roles of a one-pair case, in the order used everywhere: the reference pair, the coarse image at the
#: target date and the truth. These names (and :func:`pair_roles` for further pairs) are the only spelling.
ROLES: tuple[str, ...] = ("coarse_t1", "fine_t1", "coarse_t2", "fine_t2")
#: The roles a one-pair prediction is made from.
INPUT_ROLES: tuple[str, ...] = ("coarse_t1", "fine_t1", "coarse_t2")
#: The role of the truth (the fine image at the target date), when it is known.
TRUTH_ROLE = "fine_t2"


def pair_roles(index: int) -> tuple[str, str]:
    """(coarse, fine) role names of reference pair ``index``: t1 for the first, then t3, t4, ...

    The target date is t2 in every case, so further pairs continue from t3 (ESTARFM's naming).
    """
    if index < 0:
        raise ValueError(f"pair index must be >= 0, got {index}")
    label = 1 if index == 0 else index + 2
    return f"coarse_t{label}", f"fine_t{label}"


def is_coarse_role(role: str) -> bool:
    return role.startswith("coarse_")


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceFiles:
    """The coarse and fine images of one reference date."""

    coarse: Path
    fine: Path
    date: dt.date


@dataclass(frozen=True)
class FusionCase:
    """One fusion problem: predict the fine image at ``date_t2`` from reference pairs and coarse t2.

    The first reference pair is (``coarse_t1``, ``fine_t1``, ``date_t1``); ``extra_pairs`` holds any
    further pairs (roles ``coarse_t3``/``fine_t3``, ...: :func:`pair_roles`). ``fine_t2`` is the truth when
    known (training, validation, evaluation), else None. ``masks`` maps roles to mask rasters (nonzero =
    invalid pixel), on the fine grid or on their image's own grid.
    """

    name: str
    coarse_t1: Path
    fine_t1: Path
    coarse_t2: Path
    fine_t2: Path | None
    date_t1: dt.date
    date_t2: dt.date
    split: str | None = None
    masks: Mapping[str, Path] = field(default_factory=dict, hash=False)
    extra_pairs: tuple[ReferenceFiles, ...] = ()

    @property
    def pairs(self) -> tuple[ReferenceFiles, ...]:
        """Every reference pair, the t1 pair first."""
        return (ReferenceFiles(self.coarse_t1, self.fine_t1, self.date_t1), *self.extra_pairs)

    def paths(self) -> dict[str, Path]:
        """Role name -> path for the files the case has (pairs, coarse t2, then the truth if known)."""
        roles: dict[str, Path] = {}
        for index, pair in enumerate(self.pairs):
            coarse_role, fine_role = pair_roles(index)
            roles[coarse_role], roles[fine_role] = pair.coarse, pair.fine
        roles["coarse_t2"] = self.coarse_t2
        if self.fine_t2 is not None:
            roles[TRUTH_ROLE] = self.fine_t2
        return roles

    def dates(self) -> dict[str, dt.date]:
        """Role name -> acquisition date, for the roles of :meth:`paths`."""
        dates: dict[str, dt.date] = {}
        for index, pair in enumerate(self.pairs):
            for role in pair_roles(index):
                dates[role] = pair.date
        dates["coarse_t2"] = dates[TRUTH_ROLE] = self.date_t2
        return dates


@dataclass(frozen=True)
class SkippedFile:
    """A file that discovery looked at and did not use, with the reason."""

    path: Path
    reason: str


@dataclass
class Discovery:
    """Cases found under a folder, the layout recognised and the files skipped."""

    layout: str
    cases: list[FusionCase] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    root: Path | None = None  # the folder discovered (set by :func:`discover`)

    def split(self, name: str) -> list[FusionCase]:
        """Cases of one split (``train``, ``val`` or ``test``)."""
        return [case for case in self.cases if case.split == name]


# --------------------------------------------------------------------------------------------------
# dates


@dataclass(frozen=True)
class PairDate:
    """One date of a paper-layout folder name, ``YYYY_DOY_MMDD``.

    ``coarse_key`` (YYYY+DOY) marks the coarse file, ``fine_key`` (YYYY+MMDD) the fine file. In CIA the
    two may differ by a day (Landsat one day before the MODIS DOY), so both are kept.
    """

    year: int
    doy: int
    month: int
    day: int

    @property
    def coarse_key(self) -> str:
        return f"{self.year:04d}{self.doy:03d}"

    @property
    def fine_key(self) -> str:
        return f"{self.year:04d}{self.month:02d}{self.day:02d}"

    @property
    def date(self) -> dt.date:
        """The fine (MMDD) acquisition date."""
        return dt.date(self.year, self.month, self.day)

    def label(self) -> str:
        return f"{self.year:04d}_{self.doy:03d}_{self.month:02d}{self.day:02d}"


def pair_date(year: int, month: int, day: int, *, doy: int | None = None) -> PairDate:
    """A PairDate for a calendar date; ``doy`` defaults to that date's day of year."""
    date = dt.date(year, month, day)
    return PairDate(year, doy if doy is not None else date.timetuple().tm_yday, month, day)


def parse_pair_folder_name(name: str, *, where: Path | None = None) -> tuple[PairDate, PairDate]:
    """Parse ``YYYY_DOY_MMDD-YYYY_DOY_MMDD`` into (t1, t2); InputError if it does not parse."""
    where_text = str(where) if where is not None else name
    match = _PAIR_FOLDER.match(name)
    if not match:
        raise InputError(
            f"{where_text}: pair folder name {name!r} does not parse; expected "
            "YYYY_DOY_MMDD-YYYY_DOY_MMDD, e.g. 2001_281_1007-2001_290_1016"
        )
    values = [int(v) for v in match.groups()]
    dates = []
    for year, doy, mmdd in (values[0:3], values[3:6]):
        month, day = divmod(mmdd, 100)
        try:
            dt.date(year, month, day)
        except ValueError as exc:
            raise InputError(f"{where_text}: invalid date {year:04d}_{mmdd:04d} in folder name") from exc
        if not 1 <= doy <= 366:
            raise InputError(f"{where_text}: day of year {doy} in folder name is not within 1..366")
        dates.append(PairDate(year, doy, month, day))
    if dates[0].fine_key == dates[1].fine_key:
        raise InputError(f"{where_text}: both dates of the pair folder are the same")
    for date in dates:
        doy_date = dt.date(date.year, 1, 1) + dt.timedelta(days=date.doy - 1)
        if abs((doy_date - date.date).days) > DATE_TOLERANCE_DAYS:
            raise InputError(
                f"{where_text}: day of year {date.doy:03d} ({doy_date}) contradicts the date "
                f"{date.date} in {date.label()} by {abs((doy_date - date.date).days)} days; "
                "fix the folder name (YYYY_DOY_MMDD of one acquisition)"
            )
    return dates[0], dates[1]


def _is_raster_name(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def is_mask_name(path: Path) -> bool:
    """Whether a file is a mask by its name: ``<image stem>_mask.tif`` (suffixes in any case)."""
    return _is_raster_name(path) and path.stem.lower().endswith(MASK_SUFFIX)


def missing_folder(path: Path) -> str:
    """The message for a data folder that is not one: missing, or a file."""
    if Path(path).exists():
        return f"{path}: is a file, not a folder; give the folder that holds the images"
    return f"{path}: folder not found"


def sidecar_mask(image: str | os.PathLike[str]) -> Path | None:
    """The mask beside an image, ``<stem>_mask.tif`` (suffixes in any case, as :func:`is_mask_name`
    and folders find masks), or None. A folder is listed once while it is unchanged."""
    image = Path(image)
    try:
        changed = os.stat(image.parent).st_mtime_ns
    except OSError:
        return None
    found = _masks_in(str(image.parent), changed).get(image.stem)
    return found if found is not None and found != image else None


@functools.lru_cache(maxsize=32)
def _masks_in(folder: str, changed: int) -> dict[str, Path]:
    """Masks of a folder by the stem of their image (``changed``: the folder's mtime, the cache key)."""
    masks: dict[str, Path] = {}
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return masks
    for path in entries:
        if is_mask_name(path) and path.is_file():
            masks.setdefault(path.stem[: -len(MASK_SUFFIX)], path)
    return masks


def _split_masks(paths: list[Path]) -> tuple[list[Path], dict[str, Path]]:
    """Image-like files, and mask files keyed by the stem of the image they belong to."""
    masks = {p.stem[: -len(MASK_SUFFIX)]: p for p in paths if is_mask_name(p)}
    return [p for p in paths if not is_mask_name(p)], masks


def _attach_masks(
    chosen: Mapping[str, Path | None], masks: dict[str, Path], skipped: list[SkippedFile]
) -> dict[str, Path]:
    """Role -> mask for the chosen images that have a ``<stem>_mask`` file; other masks are skipped."""
    attached = {}
    for role, path in chosen.items():
        if path is not None and path.stem in masks:
            attached[role] = masks.pop(path.stem)
    for stem, mask in masks.items():
        skipped.append(SkippedFile(mask, f"mask of {stem}.tif, which is not an image of this case"))
    return attached


# --------------------------------------------------------------------------------------------------
# paper layout


def read_pair_folder(folder: Path, *, split: str | None = None) -> tuple[FusionCase, list[SkippedFile]]:
    """Read one paper-layout pair folder into a FusionCase; fine t2 may be absent (prediction only)."""
    folder = Path(folder)
    t1, t2 = parse_pair_folder_name(folder.name, where=folder)
    found: dict[str, list[Path]] = {"coarse_t1": [], "fine_t1": [], "coarse_t2": [], "fine_t2": []}
    skipped: list[SkippedFile] = []
    files, masks = _split_masks(_files(folder))
    for path in files:
        if not _is_raster_name(path):
            skipped.append(SkippedFile(path, "not a GeoTIFF name (.tif/.tiff)"))
            continue
        role = _role_in_pair_folder(path, t1, t2)
        if role is None:
            keys = ", ".join([t1.fine_key, t1.coarse_key, t2.fine_key, t2.coarse_key])
            skipped.append(SkippedFile(path, f"name contains none of the dates {keys}"))
        else:
            found[role].append(path)
    expected = {
        "coarse_t1": t1.coarse_key,
        "fine_t1": t1.fine_key,
        "coarse_t2": t2.coarse_key,
        "fine_t2": t2.fine_key,
    }
    chosen: dict[str, Path | None] = {}
    for role, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise InputError(f"{folder}: several files for {role} (name contains {expected[role]}): {names}")
        if not paths and role != "fine_t2":
            raise InputError(
                f"{folder}: no file for {role} (expected a .tif whose name contains {expected[role]})"
            )
        chosen[role] = paths[0] if paths else None
    case = FusionCase(
        name=folder.name,
        coarse_t1=_required(chosen["coarse_t1"]),
        fine_t1=_required(chosen["fine_t1"]),
        coarse_t2=_required(chosen["coarse_t2"]),
        fine_t2=chosen["fine_t2"],
        date_t1=t1.date,
        date_t2=t2.date,
        split=split,
        masks=_attach_masks(chosen, masks, skipped),
    )
    return case, skipped


def _required(path: Path | None) -> Path:
    assert path is not None
    return path


def _role_in_pair_folder(path: Path, t1: PairDate, t2: PairDate) -> str | None:
    name = path.name
    # A name carrying both dates of the case contradicts itself (which date is it?). Coarse keys are
    # compared only in names without a fine key: a 7-digit key can be part of an 8-digit one.
    pairs = [(t1.fine_key, t2.fine_key)]
    if t1.fine_key not in name and t2.fine_key not in name:
        pairs.append((t1.coarse_key, t2.coarse_key))
    for first, second in pairs:
        if first in name and second in name:
            raise InputError(
                f"{path}: name contains both dates {first} and {second} of the pair folder; "
                "rename it so that it carries only its own acquisition date"
            )
    # The 8-digit fine key is checked first: it is more specific than the 7-digit coarse key.
    if t1.fine_key in name:
        return "fine_t1"
    if t2.fine_key in name:
        return "fine_t2"
    if t1.coarse_key in name:
        return "coarse_t1"
    if t2.coarse_key in name:
        return "coarse_t2"
    return None


def discover_paper_layout(root: Path, *, splits: Sequence[str] = SPLITS) -> Discovery:
    """Cases of ``root/<split>/<pair folder>/`` for each split folder that exists."""
    root = Path(root)
    discovery = Discovery(layout="paper")
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        _add_pair_folders(discovery, split_dir, split)
    return discovery


def _add_pair_folders(discovery: Discovery, folder: Path, split: str | None) -> None:
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            discovery.skipped.append(SkippedFile(entry, "a file where pair folders are expected"))
            continue
        case, skipped = read_pair_folder(entry, split=split)
        discovery.cases.append(case)
        discovery.skipped.extend(skipped)


# --------------------------------------------------------------------------------------------------
# flat folder


def flat_images(
    folder: Path,
) -> tuple[dict[str, dict[dt.date, Path]], dict[str, Path], list[SkippedFile]]:
    """The images of a flat folder: {"fine": {date: path}, "coarse": {...}}, masks by image stem, skipped.

    InputError when two images of one role share a date.
    """
    by_role: dict[str, dict[dt.date, Path]] = {"fine": {}, "coarse": {}}
    skipped: list[SkippedFile] = []
    files, masks = _split_masks(_files(folder))
    for path in files:
        match = _FLAT_FILE.match(path.stem)
        if not _is_raster_name(path) or not match:
            skipped.append(
                SkippedFile(path, "not named fine_YYYYMMDD.tif or coarse_YYYYMMDD.tif (or YYYY-MM-DD)")
            )
            continue
        role, stamp = match.group(1).lower(), match.group(2)
        try:
            date = dt.datetime.strptime(stamp.replace("-", ""), "%Y%m%d").date()
        except ValueError:
            skipped.append(SkippedFile(path, f"{stamp} is not a valid date YYYYMMDD"))
            continue
        if date in by_role[role]:
            other = by_role[role][date]
            raise InputError(f"{folder}: two {role} images for {date}: {other.name} and {path.name}")
        by_role[role][date] = path
    return by_role, masks, skipped


def discover_flat_folder(
    folder: Path, *, date_pairs: Iterable[tuple[dt.date, dt.date]] | None = None
) -> Discovery:
    """Cases from ``fine_YYYYMMDD.tif`` / ``coarse_YYYYMMDD.tif`` files in one folder.

    Without ``date_pairs``, every coarse date t2 is paired with the nearest earlier date t1 that has
    both a fine and a coarse image (consecutive pairs); fine t2 is the truth when present. With
    ``date_pairs`` exactly those (t1, t2) cases are formed (t2 may precede t1: backward prediction).
    """
    folder = Path(folder)
    by_role, masks, skipped = flat_images(folder)
    fine, coarse = by_role["fine"], by_role["coarse"]
    complete = sorted(set(fine) & set(coarse))
    discovery = Discovery(layout="flat", skipped=skipped)
    if date_pairs is None:
        pairs = []
        for t2 in sorted(coarse):
            earlier = [d for d in complete if d < t2]
            if earlier:
                pairs.append((earlier[-1], t2))
    else:
        pairs = list(date_pairs)
    for t1, t2 in pairs:
        for role, date, table in (("fine", t1, fine), ("coarse", t1, coarse), ("coarse", t2, coarse)):
            if date not in table:
                raise InputError(f"{folder}: no {role}_{date:%Y%m%d}.tif for the case {t1} -> {t2}")
        images = {
            "coarse_t1": coarse[t1],
            "fine_t1": fine[t1],
            "coarse_t2": coarse[t2],
            "fine_t2": fine.get(t2),
        }
        discovery.cases.append(
            FusionCase(
                name=f"{t1:%Y%m%d}-{t2:%Y%m%d}",
                coarse_t1=coarse[t1],
                fine_t1=fine[t1],
                coarse_t2=coarse[t2],
                fine_t2=fine.get(t2),
                date_t1=t1,
                date_t2=t2,
                masks={r: masks[p.stem] for r, p in images.items() if p is not None and p.stem in masks},
            )
        )
    used = {m for case in discovery.cases for m in case.masks.values()}
    for stem, mask in masks.items():
        if mask not in used:
            discovery.skipped.append(SkippedFile(mask, f"mask of {stem}.tif, which is in no case"))
    in_cases = {p for case in discovery.cases for p in case.paths().values()}
    for role, table in (("fine", fine), ("coarse", coarse)) if date_pairs is None else ():
        for date, path in sorted(table.items()):
            if path in in_cases:
                continue
            if role == "fine" and date not in coarse:
                why = f"no coarse image of {date}, so it is in no case"
            elif role == "coarse":
                why = (
                    "in no case (no earlier date has both a fine and a coarse image); `stfusion fuse` "
                    "predicts its date from later pairs"
                )
            else:
                why = "in no case (no earlier date has both a fine and a coarse image)"
            discovery.skipped.append(SkippedFile(path, why))
    return discovery


# --------------------------------------------------------------------------------------------------
# any folder, explicit files


def flat_cases(folder: Path, mode: str = "consecutive") -> list[FusionCase]:
    """Cases of a flat folder whose target dates have a fine image (the truth).

    ``mode``: "consecutive" (each date from the nearest earlier date, as :func:`discover`), "all"
    (every ordered pair of dates, both directions), or "two-pair" (each date from the nearest dates
    before and after it, for two-pair methods).
    """
    by_role, masks, _ = flat_images(Path(folder))
    fine, coarse = by_role["fine"], by_role["coarse"]
    dates = sorted(set(fine) & set(coarse))

    def case(refs: Sequence[dt.date], target: dt.date) -> FusionCase:
        first, *rest = refs
        images = {
            "coarse_t1": coarse[first],
            "fine_t1": fine[first],
            "coarse_t2": coarse[target],
            "fine_t2": fine[target],
        }
        for index, date in enumerate(rest, start=1):
            coarse_role, fine_role = pair_roles(index)
            images[coarse_role], images[fine_role] = coarse[date], fine[date]
        return FusionCase(
            name="+".join(f"{d:%Y%m%d}" for d in refs) + f"-{target:%Y%m%d}",
            coarse_t1=coarse[first],
            fine_t1=fine[first],
            coarse_t2=coarse[target],
            fine_t2=fine[target],
            date_t1=first,
            date_t2=target,
            masks={role: masks[p.stem] for role, p in images.items() if p.stem in masks},
            extra_pairs=tuple(ReferenceFiles(coarse[d], fine[d], d) for d in rest),
        )

    if mode == "all":
        return [case([t1], t2) for t1 in dates for t2 in dates if t1 != t2]
    if mode == "two-pair":
        return [case([dates[i - 1], dates[i + 1]], dates[i]) for i in range(1, len(dates) - 1)]
    if mode == "consecutive":
        return [case([dates[i - 1]], dates[i]) for i in range(1, len(dates))]
    raise ValueError(f"mode {mode!r}: one of consecutive, all, two-pair")


def discover(root: str | os.PathLike[str]) -> Discovery:
    """Recognise the layout under ``root`` and return its cases.

    ``root`` may be a paper-layout data folder (with train/val/test), one split folder of pair
    folders, a single pair folder, or a flat folder of fine_/coarse_ files. An empty result is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(missing_folder(root))
    if any((root / split).is_dir() for split in SPLITS):
        discovery = discover_paper_layout(root)
    elif _PAIR_FOLDER.match(root.name):
        case, skipped = read_pair_folder(root)
        discovery = Discovery(layout="pair-folder", cases=[case], skipped=skipped)
    elif any(p.is_dir() and _PAIR_FOLDER.match(p.name) for p in root.iterdir()):
        discovery = Discovery(layout="paper-split")
        _add_pair_folders(discovery, root, None)
    else:
        discovery = discover_flat_folder(root)
    if not discovery.cases:
        raise InputError(
            f"{root}: no fusion cases found (expected train/val/test pair folders named "
            "YYYY_DOY_MMDD-YYYY_DOY_MMDD, or fine_YYYYMMDD.tif / coarse_YYYYMMDD.tif files)"
        )
    discovery.root = root
    return discovery


def explicit_case(
    *,
    coarse_t1: str | os.PathLike[str],
    fine_t1: str | os.PathLike[str],
    coarse_t2: str | os.PathLike[str],
    fine_t2: str | os.PathLike[str] | None = None,
    name: str | None = None,
    date_t1: dt.date | None = None,
    date_t2: dt.date | None = None,
    masks: Mapping[str, str | os.PathLike[str]] | None = None,
    extra_pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]] = (),
    sidecar_masks: bool = True,
) -> FusionCase:
    """A case from explicit file paths; dates default to those found in the file names, else unknown
    (``date.min``). ``masks`` maps roles (``fine_t1`` ...) to mask rasters (nonzero = invalid); an
    image without one there takes its sidecar ``<stem>_mask.tif`` if it has one (:func:`sidecar_mask`),
    as in every discovered layout, unless ``sidecar_masks`` is false. ``extra_pairs`` are further
    (coarse, fine) reference pairs (roles ``coarse_t3``, ``fine_t3``, ...).
    """
    extra = tuple(
        ReferenceFiles(Path(c), Path(f), _date_in_name(Path(f)) or dt.date.min) for c, f in extra_pairs
    )
    known = {role for index in range(1 + len(extra)) for role in pair_roles(index)} | set(ROLES)
    unknown = set(masks or {}) - known
    if unknown:
        raise InputError(f"masks for unknown roles {sorted(unknown)}; roles are {', '.join(sorted(known))}")
    paths = [Path(p) for p in (coarse_t1, fine_t1, coarse_t2)]
    t1 = date_t1 or _date_in_name(paths[1]) or dt.date.min
    t2 = date_t2 or _date_in_name(paths[2]) or dt.date.min
    case = FusionCase(
        extra_pairs=extra,
        name=name or Path(coarse_t2).stem,
        coarse_t1=paths[0],
        fine_t1=paths[1],
        coarse_t2=paths[2],
        fine_t2=Path(fine_t2) if fine_t2 is not None else None,
        date_t1=t1,
        date_t2=t2,
        masks={role: Path(p) for role, p in (masks or {}).items()},
    )
    sidecars = {}
    for role, path in case.paths().items() if sidecar_masks else ():
        if role not in case.masks and (found := sidecar_mask(path)) is not None:
            log.info("%s: masked by %s", path, found.name)
            sidecars[role] = found
    return replace(case, masks={**case.masks, **sidecars}) if sidecars else case


def _date_in_name(path: Path) -> dt.date | None:
    for stamp in re.findall(r"(?<!\d)(\d{8})(?!\d)", path.stem):
        try:
            return dt.datetime.strptime(stamp, "%Y%m%d").date()
        except ValueError:
            continue
    return None


# --------------------------------------------------------------------------------------------------
# validation


def check_case(
    case: FusionCase,
    *,
    require_truth: bool = False,
    min_overlap: float = MIN_COARSE_OVERLAP,
    band_counts: Mapping[str, int] | None = None,
) -> dict[str, raster.RasterInfo]:
    """Open every file of a case (metadata only) and check that they fit together.

    - every image and mask is a readable raster; every image has fine t1's band count;
    - fine t2 lies exactly on fine t1's grid (size, CRS, transform): :func:`check_fine_grid`;
    - each coarse image is on the fine grid, or georeferenced and covering at least ``min_overlap`` of
      it (it is then reprojected when read): :func:`check_coarse_footprint`;
    - acquisition dates in the files' metadata (:data:`DATE_TAGS`) agree with the case's dates.

    ``band_counts`` gives a role's band count after a band selection (``--bands``), compared instead of
    the file's. Returns role -> info. Raises InputError naming the file, the problem and the fix.
    """
    if require_truth and case.fine_t2 is None:
        raise InputError(f"{case.name}: no fine t2 image (truth) for this case, but one is required")
    infos = {role: raster.inspect(path) for role, path in case.paths().items()}
    reference = infos["fine_t1"]
    _check_distinct(case)
    counts = {role: (band_counts or {}).get(role, info.count) for role, info in infos.items()}
    for role, info in infos.items():
        if counts[role] != counts["fine_t1"]:
            selected = " (after the band selection)" if band_counts else ""
            raise InputError(
                f"{info.path}: {counts[role]} bands{selected}, but fine t1 {reference.path.name} has "
                f"{counts['fine_t1']}; all images of a case need the same bands in the same order "
                "(select and order them with --bands / --coarse-bands)"
            )
    for role, info in infos.items():
        if is_coarse_role(role):
            check_coarse_footprint(info, reference, min_overlap=min_overlap)
        elif role != "fine_t1":
            check_fine_grid(info, reference)
    for role, info in infos.items():
        _check_date(info, role, case)
    for role, mask in case.masks.items():
        if role not in infos:
            raise InputError(f"{mask}: mask for {role}, but the case {case.name} has no {role} image")
        check_mask_grid(raster.inspect(mask), reference, min_overlap=min_overlap)
    return infos


def case_bands(case: FusionCase) -> int:
    """Band count of a case (that of fine t1)."""
    return raster.inspect(case.fine_t1).count


def check_fine_grid(info: raster.RasterInfo, reference: raster.RasterInfo) -> None:
    """A fine image must lie exactly on fine t1's grid: same size, CRS and transform."""
    if (info.height, info.width) != (reference.height, reference.width):
        raise InputError(
            f"{info.path}: size {info.height}x{info.width} (rows x cols) differs from fine t1 "
            f"{reference.path.name} {reference.height}x{reference.width}; fine images of a case must "
            "share one grid (resample it onto fine t1's grid)"
        )
    if not raster.same_crs(info.crs, reference.crs):
        raise InputError(
            f"{info.path}: CRS {info.crs} differs from fine t1 {reference.path.name} CRS {reference.crs}; "
            "fine images of a case must share one grid"
        )
    if not raster.same_grid(info, reference):
        raise InputError(
            f"{info.path}: transform {_transform_text(info)} differs from fine t1 {reference.path.name} "
            f"{_transform_text(reference)}; fine images of a case must share one grid"
        )


def _transform_text(info: raster.RasterInfo) -> str:
    a, _, c, _, e, f = info.transform
    return f"(origin {c:g}, {f:g}; pixel {a:g} x {-e:g})"


def coarse_on_fine_grid(info: raster.RasterInfo, reference: raster.RasterInfo) -> bool:
    """Whether a coarse image is already on the fine grid (read as is; otherwise reprojected)."""
    return raster.same_grid(info, reference)


def check_coarse_footprint(
    info: raster.RasterInfo, reference: raster.RasterInfo, *, min_overlap: float = MIN_COARSE_OVERLAP
) -> None:
    """A coarse image off the fine grid needs a CRS (both) and must cover ``min_overlap`` of the grid."""
    if coarse_on_fine_grid(info, reference):
        return
    _check_placeable(info, reference, what="coarse image", min_overlap=min_overlap)


def check_mask_grid(
    info: raster.RasterInfo, reference: raster.RasterInfo, *, min_overlap: float = MIN_COARSE_OVERLAP
) -> None:
    """A mask is on the fine grid, or georeferenced and covering ``min_overlap`` of it."""
    if raster.same_grid(info, reference):
        return
    _check_placeable(info, reference, what="mask", min_overlap=min_overlap)


def _check_placeable(
    info: raster.RasterInfo, reference: raster.RasterInfo, *, what: str, min_overlap: float
) -> None:
    grid = f"{reference.height}x{reference.width}, CRS {reference.crs}"
    if info.crs is None or reference.crs is None:
        missing = info.path.name if info.crs is None else reference.path.name
        raise InputError(
            f"{info.path}: {what} is not on the grid of {reference.path.name} ({info.height}x{info.width}, "
            f"CRS {info.crs} vs {grid}) and {missing} has no CRS, so it cannot be reprojected; give both a "
            f"CRS or resample it onto the grid of {reference.path.name}"
        )
    fraction = raster.footprint_fraction(info, reference)
    if fraction < min_overlap:
        raise InputError(
            f"{info.path}: footprint (CRS {info.crs}) covers {fraction:.0%} of the grid of "
            f"{reference.path.name}, less than the {min_overlap:.0%} required; check that it shows the "
            "same area and that its CRS is right"
        )


def acquisition_date(info: raster.RasterInfo) -> dt.date | None:
    """The acquisition date in a raster's metadata tags (:data:`DATE_TAGS`), or None."""
    tags = {key.upper(): value for key, value in info.tags.items()}
    for key in DATE_TAGS:
        text = tags.get(key)
        if not text:
            continue
        match = re.match(r"^\s*(\d{4})[-:/]?(\d{2})[-:/]?(\d{2})", text)
        if match:
            try:
                return dt.date(*(int(v) for v in match.groups()))
            except ValueError:
                continue
    return None


def _check_distinct(case: FusionCase) -> None:
    """The truth must not be one of the inputs (it would score a copy of an input)."""
    if case.fine_t2 is None:
        return
    for pair in case.pairs:
        if _same_file(case.fine_t2, pair.fine):
            raise InputError(
                f"{case.fine_t2}: the truth (fine t2) is also a reference image of {case.name}; "
                "give the fine image of the target date"
            )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _check_date(info: raster.RasterInfo, role: str, case: FusionCase) -> None:
    expected = case.dates()[role]
    found = acquisition_date(info)
    if found is None or expected == dt.date.min:
        return
    if abs((found - expected).days) > DATE_TOLERANCE_DAYS:
        raise InputError(
            f"{info.path}: acquired {found} (metadata), but it is {role} of {case.name}, dated {expected}; "
            "put it in the right case (predicting backward in time is fine: swap the folder's dates)"
        )


# --------------------------------------------------------------------------------------------------
# splits for training: the paper's folders, or by date


@dataclass
class Splits:
    """Training, validation and test cases, and how they were chosen (one line for tables and logs)."""

    train: list[FusionCase]
    val: list[FusionCase]
    test: list[FusionCase]
    rule: str


def split_cases(discovery: Discovery, *, test_dates: Sequence[dt.date] = ()) -> Splits:
    """Train / val / test cases of any layout.

    The paper layout keeps its folders. Other layouts (a flat folder of dated files) are split by date:
    the cases whose target date is in ``test_dates`` (default: the latest target date) are the test;
    the others train (default test date: the latest with a fine image, a truth to score; a test date
    without one is refused), and validation is a spatial hold-out of the training cases (``val`` is empty;
    the caller sets ``val_holdout``). Cases whose reference date is a test date are dropped from
    training, so no test date is ever seen, and so are cases without a fine image of their target date
    (a date to predict, with nothing to learn from).
    """
    if discovery.layout == "paper":
        _refuse_test_dates(discovery, test_dates)
        train, val, test = (discovery.split(name) for name in SPLITS)
        return Splits(train, val, test, rule="the data folder's train/, val/ and test/ pair folders")
    cases = discovery.cases
    chosen = _test_dates(discovery, test_dates)
    test = [case for case in cases if case.date_t2 in chosen]
    if all(case.fine_t2 is None for case in test):
        raise InputError(
            f"{_where(discovery)}test date(s) {', '.join(map(str, sorted(chosen)))}: no fine image to score "
            "a test against; choose a date that has one (--test-date)"
        )
    apart = [case for case in cases if case.date_t2 not in chosen and case.date_t1 not in chosen]
    train = [case for case in apart if case.fine_t2 is not None]
    if not train:
        untrained = f" and {len(apart)} have no fine image of their target date" if apart else ""
        raise InputError(
            f"{_where(discovery)}no case to train on: of {len(cases)} case(s), {len(cases) - len(apart)} "
            f"involve the test date(s) {', '.join(map(str, sorted(chosen)))}{untrained}; a flat folder "
            "needs fine images of three dates or more to train on some and test on another"
        )
    dates = ", ".join(str(d) for d in sorted(chosen))
    return Splits(train, [], test, rule=f"by date: test = target date {dates}; validation = held-out rows")


def _where(discovery: Discovery) -> str:
    """``"<folder>: "`` to start a message about a discovered folder (empty when it has no root)."""
    return f"{discovery.root}: " if discovery.root is not None else ""


def _refuse_test_dates(discovery: Discovery, test_dates: Sequence[dt.date]) -> None:
    if test_dates:
        raise InputError(
            f"{_where(discovery)}--test-date splits a flat folder by date; this folder has the paper "
            "layout, whose test/ pair folders are the test"
        )


def _test_dates(discovery: Discovery, test_dates: Sequence[dt.date]) -> set[dt.date]:
    """A flat folder's test dates: those given (each must be a case's target date), else the latest
    target date that has a fine image (a truth to score), else the latest."""
    cases = discovery.cases
    where = _where(discovery)
    if not cases:
        raise InputError(f"{where}no fusion case found (fine_YYYYMMDD.tif / coarse_YYYYMMDD.tif)")
    targets = sorted({case.date_t2 for case in cases})
    scored = sorted({case.date_t2 for case in cases if case.fine_t2 is not None})
    chosen = set(test_dates) or {(scored or targets)[-1]}  # by default the latest date with a truth
    unknown = chosen - set(targets)
    if unknown:
        raise InputError(
            f"{where}test date(s) {', '.join(map(str, sorted(unknown)))} are no case's target date "
            f"(target dates: {', '.join(map(str, targets))})"
        )
    return chosen


def split_of(discovery: Discovery, name: str, *, test_dates: Sequence[dt.date] = ()) -> list[FusionCase]:
    """The cases of one split as :func:`split_cases` (and so ``stfusion train``) makes them: a paper
    layout's folder; any other layout split by date (its test split needs no training case: two
    dates are enough to test a model on the later one)."""
    if name not in SPLITS:
        raise InputError(f"split {name!r}: choose one of {', '.join(SPLITS)}")
    if discovery.layout == "paper":
        _refuse_test_dates(discovery, test_dates)
        return discovery.split(name)
    if name == "test":
        chosen = _test_dates(discovery, test_dates)
        return [case for case in discovery.cases if case.date_t2 in chosen]
    return list(getattr(split_cases(discovery, test_dates=test_dates), name))


def to_paper_layout(discovery: Discovery, out: Path, *, test_dates: Sequence[dt.date] = ()) -> list[Path]:
    """Write the cases as the MLFF-GAN paper's folders ``out/{train,val,test}/<t1>-<t2>/`` (copies, so
    editing them never touches the originals). Coarse files are named ``coarse_AYYYYDOY.tif``, fine ones
    ``fine_YYYYMMDD.tif``. The validation folder holds the last training case reversed when no other
    case is free (as the paper's own data do). Returns the pair folders written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose an empty output folder")
    if discovery.root is not None and out.resolve() == discovery.root.resolve():
        raise InputError(f"{out}: is the data folder itself; write the paper layout to a new folder")
    splits = split_cases(discovery, test_dates=test_dates)
    val = splits.val or [_reversed(splits.train[-1])]
    if not splits.val:
        log.warning(
            "%s: val/ holds the training case %s reversed (no other case is free, as in the paper's own "
            "data): an epoch chosen on it is chosen on training dates; `stfusion train` on the flat "
            "folder itself validates on held-out rows instead",
            out,
            splits.train[-1].name,
        )
    folders: list[Path] = []
    copies: list[tuple[Path, Path]] = []
    for split, cases in (("train", splits.train), ("val", val), ("test", splits.test)):
        for case in cases:
            t1, t2 = pair_date(*_ymd(case.date_t1)), pair_date(*_ymd(case.date_t2))
            folder = out / split / f"{t1.label()}-{t2.label()}"
            if folder.exists():  # every folder checked before anything is written
                raise InputError(f"{folder}: exists; choose an empty output folder")
            names = {
                "coarse_t1": f"coarse_A{t1.coarse_key}",
                "fine_t1": f"fine_{t1.fine_key}",
                "coarse_t2": f"coarse_A{t2.coarse_key}",
                "fine_t2": f"fine_{t2.fine_key}",
            }
            for role, path in case.paths().items():
                copies.append((path, folder / f"{names[role]}{path.suffix}"))
                mask = case.masks.get(role)
                if mask is not None:
                    copies.append((mask, folder / f"{names[role]}{MASK_SUFFIX}{mask.suffix}"))
            folders.append(folder)
    copy_files(copies)
    return folders


def _ymd(date: dt.date) -> tuple[int, int, int]:
    return date.year, date.month, date.day


def _reversed(case: FusionCase) -> FusionCase:
    if case.fine_t2 is None:
        raise InputError(f"{case.name}: no truth, cannot be used for validation")
    return FusionCase(
        name=f"{case.date_t2:%Y%m%d}-{case.date_t1:%Y%m%d}",
        coarse_t1=case.coarse_t2,
        fine_t1=case.fine_t2,
        coarse_t2=case.coarse_t1,
        fine_t2=case.fine_t1,
        date_t1=case.date_t2,
        date_t2=case.date_t1,
        masks={_swap(role): path for role, path in case.masks.items()},
    )


def _swap(role: str) -> str:
    return role.replace("t1", "tX").replace("t2", "t1").replace("tX", "t2")

"""STARFM: Spatial and Temporal Adaptive Reflectance Fusion Model (Gao et al. 2006).

Implements ``docs/specs/STARFM.md`` (section numbers below refer to it). Arrays are reflectance
(0..1) on the fine grid, bands first: ``(C, H, W)``. A pixel is invalid where it is NaN or where an
explicit mask says False.

Presets (spec section 4, table 5): ``"starfm_v121"`` (default; Feng Gao's distributed program
v1.2.1), ``"gao2006"`` (the paper) and ``"starfm4py"`` (the starfm4py package: 31 x 31 window with
zero padding, window-local similarity tolerance, spectral-only filter, weights in input units; see
:data:`PRESETS` for its choices). Every switch of the spec is a field of :class:`StarfmConfig` and a
keyword option of :func:`starfm` / :func:`starfm_multi` / :func:`prepare` (``A`` is
``distance_scale``, ``B`` is ``dn_scale``; ``window_size`` = 2 * ``half_window`` + 1 is accepted as
an alias); :data:`OPTION_HELP` has one line of help per option.

No silent holes (ours, not in any reference): where the faithful rules leave a pixel unpredicted
although its inputs are valid (no candidate with ``fallback="nodata"``, or a prediction outside
``valid_range`` with ``out_of_range="nodata"``), ``fill_holes=True`` (default) fills it, see
:class:`StarfmConfig`; ``fill_holes=False`` restores the faithful NaN. A :class:`HoleCounter` passed
as ``holes=`` counts those pixels either way; :func:`prepare` keeps one in its result. The
prediction is NaN only where the inputs are invalid (no pair valid at the pixel, or invalid
``coarse_t2``).

Computation is a sum over window offsets ("shift and accumulate", spec section 8): per-pixel images
(similarity key, S, T, weight factors, local values V) are computed once per row block, then every
target pixel sums the weights and weighted local values of the candidates in its window. Two engines
compute that sum: ``"numba"`` (a compiled loop, parallel over bands x rows; the fast CPU path) and
``"torch"`` (vectorised per window row, runs on CPU threads or a GPU). ``"auto"`` picks numba when it
is importable. Both give the same result up to float summation order.

Memory is bounded by row blocks. :func:`prepare` is the streaming entry point (the block contract of
:mod:`stfusion.blocks`): one pass over a :class:`~stfusion.blocks.SceneSource` for the global
similarity tolerances (:class:`FineStdAccumulator`; none for presets using the window-local std),
then a :class:`~stfusion.blocks.RowBlocks` prediction calling :func:`starfm_block` on row blocks
with ``halo_rows(config)`` rows of context. :func:`starfm_multi` does the same on arrays in memory
(with masks and class maps) and gives identical values. A caller driving :func:`starfm_block`
itself:

1. computes the global similarity tolerances once, with :class:`FineStdAccumulator` (one pass over
   the fine images, block by block) and :func:`tolerances_from_std`, or :func:`similarity_tolerances`
   when the fine images fit in memory (class-map mode and ``similarity_std="local"`` need none);
2. for each output row range ``[r0, r1)`` reads rows ``[max(0, r0 - halo), min(H, r1 + halo))``
   with ``halo = halo_rows(config)`` and calls :func:`starfm_block` with ``halo_top = r0 - max(0,
   r0 - halo)`` and ``halo_bottom = min(H, r1 + halo) - r1``; it returns exactly rows ``[r0, r1)``
   of the whole-image result.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from stfusion.blocks import (
    Block,
    RowBlocks,
    SceneSource,
    check_fusion_inputs,
    check_reflectance,
    iter_source_blocks,
)

logger = logging.getLogger(__name__)


def _load_numba() -> Any:
    """numba is optional: the torch engine computes the same result without it."""
    try:
        return importlib.import_module("numba")
    except ImportError:  # pragma: no cover - depends on the environment
        return None


numba: Any = _load_numba()

Weighting = Literal["direct", "log"]
FilterLogic = Literal["or", "and", "spectral"]
CenterReference = Literal["min", "max"]
Fallback = Literal["local", "nodata"]
OutOfRange = Literal["keep", "nodata"]
Engine = Literal["auto", "numba", "torch"]
SimilarityStd = Literal["global", "local"]
Border = Literal["truncate", "zeros"]
FloatOrPerBand = float | tuple[float, ...]

#: Preset switches (spec sections 4 and 5); everything else keeps the StarfmConfig defaults. Every
#: preset lists all the switches that define it, so a preset never inherits another's window or
#: units. ``starfm4py`` reproduces the starfm4py package as the spec documents it ([S4P] in
#: sections 3.3, 5 and 6.1); where the spec leaves a detail open the choice is marked "open":
#:
#: - window 31 x 31 (h = 15), A = ``spatImp`` = 150 used in pixels, m = 4 classes;
#: - similarity tolerance 2 * std / m with the std of the fine image's *window* (population std,
#:   ddof = 0, open: numpy's default), exact zeros and invalid pixels left out of it (starfm4py turns
#:   zeros into NaN for it); similarity test strict ``<`` (open: as spec eq. 9);
#: - zero padding (``border="zeros"``): outside the scene F = C_1 = C_0 = 0, so those pixels have
#:   S = T = 0 (maximal weight 1/D), local value 0, and are similar when |F(x)| < tol(x): the
#:   package's defect, reproduced; ``border="truncate"`` removes it;
#: - weights 1 / ((S + 1)(T + 1) D) "in the units it is fed", T always in the weight: we feed it
#:   reflectance 0..1 (its 0.03 uncertainty is a reflectance), i.e. ``dn_scale`` B = 1. Emulate it
#:   fed DN x 10000 with ``dn_scale=10000, sigma_fine=3e-6, sigma_coarse=3e-6`` (0.03 DN);
#: - spectral filter only, S(p) <= S(x) + sigma_S with sigma_S = sqrt(0.03^2 + 0.03^2) (spec
#:   eq. 4; open: "<=" as the spec's other presets, it differs from "<" on exact ties only);
#:   starfm4py's ``temp`` flag (S and T filter) is ``filter_logic="and"``;
#: - centre-only prediction when the centre's S or T is 0: the copy rule (spec eq. 8), which for
#:   one pair is exactly the centre's local value F_1 + C_0 - C_1; applied whatever the filter;
#: - no range check, no fallback (the centre always passes its own filters, so none is needed).
#: starfm4py takes one pair; with K >= 2 this preset pools the pairs like the others (open: an
#: extension, with the min-over-pairs centre reference and the paper's copy rule).
PRESETS: dict[str, dict[str, Any]] = {
    "starfm_v121": {
        "half_window": 25,
        "distance_scale": None,
        "n_classes": 40,
        "sigma_fine": 0.005,
        "sigma_coarse": 0.005,
        "dn_scale": 10000.0,
        "similarity_std": "global",
        "border": "truncate",
        "temporal_weight": "auto",
        "filter_logic": "or",
        "center_reference": "min",
        "uncertainty_max_weight": True,
        "copy_on_zero_diff": False,
        "weighting": "direct",
        "fallback": "nodata",
        "out_of_range": "nodata",
        "valid_range": (0.0, 1.0),
    },
    "gao2006": {
        "half_window": 25,
        "distance_scale": None,
        "n_classes": 40,
        "sigma_fine": 0.005,
        "sigma_coarse": 0.005,
        "dn_scale": 10000.0,
        "similarity_std": "global",
        "border": "truncate",
        "temporal_weight": True,
        "filter_logic": "and",
        "center_reference": "min",
        "uncertainty_max_weight": False,
        "copy_on_zero_diff": True,
        "weighting": "direct",
        "fallback": "local",
        "out_of_range": "keep",
        "valid_range": (0.0, 1.0),
    },
    "starfm4py": {
        "half_window": 15,
        "distance_scale": 150.0,
        "n_classes": 4,
        "sigma_fine": 0.03,
        "sigma_coarse": 0.03,
        "dn_scale": 1.0,
        "similarity_std": "local",
        "border": "zeros",
        "temporal_weight": True,
        "filter_logic": "spectral",
        "center_reference": "min",
        "uncertainty_max_weight": False,
        "copy_on_zero_diff": True,
        "weighting": "direct",
        "fallback": "nodata",
        "out_of_range": "keep",
        "valid_range": (0.0, 1.0),
    },
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "weighting": ("direct", "log"),
    "temporal_weight": ("auto", True, False),
    "filter_logic": ("or", "and", "spectral"),
    "center_reference": ("min", "max"),
    "fallback": ("local", "nodata"),
    "out_of_range": ("keep", "nodata"),
    "similarity_std": ("global", "local"),
    "border": ("truncate", "zeros"),
    "engine": ("auto", "numba", "torch"),
}

_BOOL_OPTIONS = ("uncertainty_max_weight", "copy_on_zero_diff", "use_spatial", "fill_holes")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    try:
        return bool(float(value) > 0)
    except (TypeError, ValueError):
        return False


#: Rows per chunk of the global-statistics pass (as stfusion.blocks.iter_source_blocks reads them).
_STATS_ROWS = 256

#: Working-set budget used to choose ``block_rows`` automatically (bytes of per-block arrays).
_BLOCK_BUDGET_BYTES = 64 * 2**20


@dataclass(frozen=True)
class StarfmConfig:
    """All STARFM switches (spec section 2); build with :meth:`from_preset` or :func:`make_config`.

    Attributes:
        preset: name of the preset the switches started from (recorded for provenance).
        half_window: h; the search window is (2h+1) x (2h+1) fine pixels.
        distance_scale: A, in fine pixels, of D = 1 + d / A; None means A = h.
        n_classes: m, the similarity tolerance is 2 * std(F_k) / m (per pair and band).
        sigma_fine, sigma_coarse: uncertainties of fine / coarse reflectance (0..1 units); a float
            or one value per band.
        dn_scale: B, digital numbers per reflectance unit (10000); fixes the "+1 DN" terms. B = 1
            puts the "+1" in reflectance units (starfm4py fed reflectance).
        weighting: "direct" (eq. 15) or "log" (eq. 16).
        temporal_weight: use T in the weight; "auto" means only when K >= 2.
        filter_logic: candidate filter (eq. 11): "or" (reference), "and" (paper) or "spectral"
            (S test only, starfm4py).
        center_reference: "min" or "max" over pairs of the centre S and T (eq. 10).
        uncertainty_max_weight: rule (17), weight 1 when S^ * T^ < B * sigma_sum (direct only).
        copy_on_zero_diff: rule (8), copy F_k (T = 0) or C_0 (S = 0) at the centre.
        fallback: "local" (mean centre local value) or "nodata" when no candidate.
        use_spatial: False keeps only the centre pixel of each pair (section 3.11).
        similarity_tol: explicit tolerance(s) replacing 2 sigma / m: a float, one value per band,
            or K x C values (flattened, pair-major); reflectance units. Wins over
            ``similarity_std``.
        similarity_std: "global" (eq. 7: std of the whole fine image) or "local" (std of the fine
            image in the target's window, valid non-zero pixels only; starfm4py).
        border: "truncate" (spec 6.1: only in-scene pixels are candidates) or "zeros" (starfm4py:
            outside the scene F = C = 0, valid candidates with local value 0).
        similarity_bands: None (per-band test) or the 0-based bands that must all pass (joint test).
        valid_range: (low, high), exclusive, for ``out_of_range="nodata"``.
        out_of_range: "keep" or "nodata" (NaN outside the open valid_range).
        fill_holes: ours, in no reference. Where the rules above leave a pixel-band NaN although
            its inputs are valid (C_0 and at least one pair valid there): a prediction outside
            ``valid_range`` (``out_of_range="nodata"``) is clipped to the closed range (the
            method's own estimate, only bounded); a pixel without candidates
            (``fallback="nodata"``) gets the mean over valid pairs of its local value
            F_k + C_0 - C_k (the ``"local"`` fallback), clipped to the closed range when
            ``out_of_range="nodata"``. False: the faithful NaN.
        engine: "auto", "numba" or "torch" (same results; speed only).
        block_rows: output rows per block (None: chosen from a ~64 MiB working-set budget).
        num_threads: threads for the engine (None: the engine's default); does not change results.
        device: torch device for the torch engine ("cpu", "cuda", ...).
    """

    preset: str = "starfm_v121"
    half_window: int = 25
    distance_scale: float | None = None
    n_classes: int = 40
    sigma_fine: FloatOrPerBand = 0.005
    sigma_coarse: FloatOrPerBand = 0.005
    dn_scale: float = 10000.0
    weighting: Weighting = "direct"
    temporal_weight: Literal["auto"] | bool = "auto"
    filter_logic: FilterLogic = "or"
    center_reference: CenterReference = "min"
    uncertainty_max_weight: bool = True
    copy_on_zero_diff: bool = False
    fallback: Fallback = "nodata"
    use_spatial: bool = True
    similarity_tol: FloatOrPerBand | None = None
    similarity_std: SimilarityStd = "global"
    border: Border = "truncate"
    similarity_bands: tuple[int, ...] | None = None
    valid_range: tuple[float, float] = (0.0, 1.0)
    out_of_range: OutOfRange = "nodata"
    fill_holes: bool = True
    engine: Engine = "auto"
    block_rows: int | None = None
    num_threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
                raise ValueError(f"STARFM option {name}={value!r} is invalid; choose from {choices}")
        for name in _BOOL_OPTIONS:
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"STARFM option {name}={value!r} is invalid; choose True or False")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown STARFM preset: preset={self.preset!r}; choose from {sorted(PRESETS)}")
        if not _is_int(self.half_window) or self.half_window < 0:
            raise ValueError(f"STARFM option half_window must be an integer >= 0, got {self.half_window!r}")
        if self.distance_scale is not None and not _positive(self.distance_scale):
            raise ValueError(
                f"STARFM option distance_scale (A) must be > 0 pixels or None, got {self.distance_scale!r}"
            )
        if not _is_int(self.n_classes) or self.n_classes < 1:
            raise ValueError(f"STARFM option n_classes must be an integer >= 1, got {self.n_classes!r}")
        for name in ("sigma_fine", "sigma_coarse"):
            values = np.atleast_1d(np.asarray(getattr(self, name), dtype=float))
            if values.size == 0 or not np.all(values >= 0):
                raise ValueError(f"STARFM option {name} must be >= 0 (a float or one per band), got {values}")
        if not _positive(self.dn_scale):
            raise ValueError(f"STARFM option dn_scale (B) must be > 0, got {self.dn_scale!r}")
        if self.similarity_tol is not None:
            values = np.atleast_1d(np.asarray(self.similarity_tol, dtype=float))
            if values.size == 0 or not np.all(values >= 0):
                raise ValueError(f"STARFM option similarity_tol must be >= 0 or None, got {values}")
        if self.similarity_bands is not None and (
            len(self.similarity_bands) == 0 or min(self.similarity_bands) < 0
        ):
            raise ValueError(
                "STARFM option similarity_bands must list 0-based band indices or be None, "
                f"got {self.similarity_bands!r}"
            )
        low, high = self.valid_range
        if not low < high:
            raise ValueError(
                f"STARFM option valid_range must be (low, high) with low < high, got {low, high}"
            )
        if self.block_rows is not None and (not _is_int(self.block_rows) or self.block_rows < 1):
            raise ValueError(
                f"STARFM option block_rows must be an integer >= 1 or None, got {self.block_rows!r}"
            )
        if self.num_threads is not None and (not _is_int(self.num_threads) or self.num_threads < 1):
            raise ValueError(
                f"STARFM option num_threads must be an integer >= 1 or None, got {self.num_threads!r}"
            )

    @classmethod
    def from_preset(cls, name: str = "starfm_v121", **overrides: Any) -> StarfmConfig:
        """The preset's switches (spec section 4) with ``overrides`` applied."""
        return make_config(preset=name, **overrides)


def make_config(config: StarfmConfig | None = None, **options: Any) -> StarfmConfig:
    """Build a :class:`StarfmConfig` from keyword options (the names of its fields).

    ``preset`` selects the starting switches: the preset's, or with ``config`` given, ``config``
    with the preset's switches applied; ``window_size`` (full odd side) is an alias of
    ``half_window``. Other options override single fields. Unknown names or invalid values raise
    ValueError naming the option, the value and what is allowed.
    """
    options = dict(options)
    fields = {f.name for f in dataclasses.fields(StarfmConfig)}
    unknown = sorted(set(options) - fields - {"window_size"})
    if unknown:
        given = ", ".join(f"{name}={options[name]!r}" for name in unknown)
        raise ValueError(
            f"unknown STARFM option(s) {given}; valid options: {sorted(fields | {'window_size'})}"
        )
    if "window_size" in options:
        size = options.pop("window_size")
        if not _is_int(size) or size < 1 or size % 2 == 0:
            raise ValueError(f"STARFM option window_size must be a positive odd integer, got {size!r}")
        half = (int(size) - 1) // 2
        if options.get("half_window", half) != half:
            raise ValueError(
                f"window_size={size} and half_window={options['half_window']} disagree; give one of them"
            )
        options["half_window"] = half
    converters: dict[str, Any] = {
        "sigma_fine": _float_or_tuple,
        "sigma_coarse": _float_or_tuple,
        "similarity_tol": _float_or_tuple,
        "similarity_bands": lambda v: tuple(int(b) for b in v),
        "valid_range": _float_pair,
    }
    for key, convert in converters.items():
        if options.get(key) is None:
            continue
        try:
            options[key] = convert(options[key])
        except (TypeError, ValueError):
            raise ValueError(
                f"STARFM option {key}={options[key]!r} is invalid; expected {OPTION_HELP[key]}"
            ) from None
    preset = options.pop("preset", None if config is not None else "starfm_v121")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown STARFM preset: preset={preset!r}; choose from {sorted(PRESETS)}")
    if config is None:
        assert preset is not None
        return StarfmConfig(preset=preset, **{**PRESETS[preset], **options})
    if preset is not None:
        options = {"preset": preset, **PRESETS[preset], **options}
    return dataclasses.replace(config, **options)


#: One line of help per user-facing option of :func:`prepare`, :func:`starfm` and
#: :func:`starfm_multi` (the method registry and the CLI show these).
OPTION_HELP: dict[str, str] = {
    "preset": "starting switches: starfm_v121 (Gao's program v1.2.1, default), gao2006 (the paper), "
    "starfm4py (the starfm4py package)",
    "window_size": "full side of the square search window in fine pixels (odd); alias of half_window",
    "half_window": "search window radius h in fine pixels (window 2h+1)",
    "distance_scale": "A in D = 1 + d/A, fine pixels; empty = half_window",
    "n_classes": "m: similarity tolerance = 2 * std(fine) / m (more classes, fewer similar pixels)",
    "sigma_fine": "uncertainty of fine reflectance (0..1), one value or one per band",
    "sigma_coarse": "uncertainty of coarse reflectance (0..1), one value or one per band",
    "dn_scale": "B: digital numbers per reflectance unit for the '+1' weight terms (10000; 1 = reflectance)",
    "weighting": "weight form: direct 1/(S T D) or log",
    "temporal_weight": "use the temporal difference T in the weight: auto (only with >= 2 pairs), "
    "True, False",
    "filter_logic": "candidate filter on S/T: or (reference), and (paper), spectral (S only, starfm4py)",
    "center_reference": "centre S/T bound over pairs: min (reference) or max (as printed in the paper)",
    "uncertainty_max_weight": "reference rule: weight 1 when the differences are below the uncertainty",
    "copy_on_zero_diff": "paper rule: copy the fine (T = 0) or coarse (S = 0) value at the centre",
    "fallback": "no candidate: local (centre's F + C2 - C1) or nodata",
    "use_spatial": "False: use only the centre pixel (no window search; for comparison)",
    "similarity_tol": "explicit similarity tolerance(s) in reflectance, replacing 2 std / m",
    "similarity_std": "std behind the tolerance: global (whole fine image) or local (search window)",
    "border": "outside the scene: truncate the window, or zeros (starfm4py's zero padding)",
    "similarity_bands": "0-based bands that must all pass the similarity test (default: each band alone)",
    "valid_range": "(low, high) open reflectance range accepted with out_of_range=nodata",
    "out_of_range": "prediction outside valid_range: keep, or nodata",
    "fill_holes": "fill pixels the method leaves unpredicted although inputs are valid (range clip / "
    "local value); False = faithful NaN",
    "engine": "compute engine: auto, numba (CPU) or torch (CPU/GPU); same results",
    "block_rows": "output rows per block (memory); empty = automatic",
    "num_threads": "threads for the engine; empty = engine default",
    "device": "torch device for engine=torch (cpu, cuda, ...)",
}


def _float_or_tuple(value: Any) -> float | tuple[float, ...]:
    if np.ndim(value) == 0:
        return float(value)
    return tuple(float(v) for v in np.ravel(value))


def _float_pair(value: Any) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    return low, high


def halo_rows(config: StarfmConfig) -> int:
    """Rows of context needed above and below a block of output rows (the window radius)."""
    return config.half_window if config.use_spatial else 0


# --------------------------------------------------------------------------------------------
# Global statistic: the similarity tolerance (spec eq. 7)
# --------------------------------------------------------------------------------------------


class FineStdAccumulator:
    """Population standard deviation of each fine reference image, accumulated block by block.

    For streaming: feed every row block once (without halo overlap), then read :attr:`std`
    (K, C). Uses Chan's pairwise update in float64, so the result does not depend on blocking
    beyond rounding.
    """

    def __init__(self) -> None:
        self.count: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(
        self, fine_refs: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None
    ) -> None:
        """Add rows of each fine image, (C, h, W) per pair; ``masks`` True = valid (optional)."""
        counts, means, m2s = [], [], []
        for k, fine in enumerate(fine_refs):
            f = np.asarray(fine, dtype=np.float64)
            valid = np.isfinite(f)
            if masks is not None and masks[k] is not None:
                valid &= np.broadcast_to(np.asarray(masks[k], dtype=bool), f.shape)
            n = valid.sum(axis=(1, 2)).astype(np.float64)
            total = np.where(valid, f, 0.0).sum(axis=(1, 2))
            mean = np.divide(total, n, out=np.zeros_like(total), where=n > 0)
            dev = np.where(valid, f - mean[:, None, None], 0.0)
            counts.append(n)
            means.append(mean)
            m2s.append((dev * dev).sum(axis=(1, 2)))
        n_b, mean_b, m2_b = np.stack(counts), np.stack(means), np.stack(m2s)
        if self.count is None or self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.count + n_b
        safe = np.where(n > 0, n, 1.0)
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / safe
        self.m2 = self.m2 + m2_b + delta * delta * self.count * n_b / safe
        self.count = n

    @property
    def std(self) -> np.ndarray:
        """(K, C) population standard deviation of the valid pixels (NaN where none)."""
        if self.count is None or self.m2 is None:
            raise ValueError("FineStdAccumulator.std read before any update()")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.m2 / self.count)


def tolerances_from_std(std: np.ndarray, config: StarfmConfig) -> np.ndarray:
    """(K, C) similarity tolerances 2 * std / m (or the explicit ``similarity_tol``)."""
    std = np.asarray(std, dtype=np.float64)
    if config.similarity_tol is not None:
        explicit = np.asarray(config.similarity_tol, dtype=np.float64)
        n_pairs, n_bands = std.shape
        if explicit.size == n_pairs * n_bands and explicit.size != n_bands:
            explicit = explicit.reshape(n_pairs, n_bands)
        try:
            return np.broadcast_to(explicit, std.shape).copy()
        except ValueError:
            raise ValueError(
                f"similarity_tol has {explicit.size} values; give 1, one per band ({n_bands}) "
                f"or one per pair and band ({n_pairs * n_bands})"
            ) from None
    return 2.0 * std / config.n_classes


def needs_global_std(config: StarfmConfig) -> bool:
    """True when the tolerances need the global std of the fine images (one pass over the scene)."""
    return config.similarity_tol is None and config.similarity_std == "global"


def similarity_tolerances(
    fine_refs: Sequence[np.ndarray],
    *,
    config: StarfmConfig,
    fine_masks: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    """(K, C) tolerances from the whole fine images (population std over valid pixels)."""
    acc = FineStdAccumulator()
    acc.update(fine_refs, fine_masks)
    return tolerances_from_std(acc.std, config)


# --------------------------------------------------------------------------------------------
# Holes: pixels the faithful rules leave unpredicted although their inputs are valid
# --------------------------------------------------------------------------------------------


@dataclass
class HoleCounter:
    """Counts of pixel-bands the faithful rules leave NaN although their inputs are valid.

    They are filled when ``fill_holes=True`` (see :class:`StarfmConfig`) and left NaN otherwise;
    the counts are the same either way. Pass one as ``holes=`` to :func:`starfm`,
    :func:`starfm_multi` or :func:`starfm_block`; :func:`prepare`'s result carries one. Counts add
    up over every call / block, so a caller can log them at the end of a scene.

    Attributes:
        no_candidate: (C,) int64, pixels without any candidate (``fallback="nodata"``).
        out_of_range: (C,) int64, predictions outside ``valid_range`` (``out_of_range="nodata"``).
    """

    no_candidate: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    out_of_range: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def add(self, no_candidate: np.ndarray, out_of_range: np.ndarray) -> None:
        """Add per-band counts, (C,) each."""
        for name, counts in (("no_candidate", no_candidate), ("out_of_range", out_of_range)):
            counts = np.asarray(counts, dtype=np.int64)
            current = getattr(self, name)
            setattr(self, name, counts.copy() if current.size == 0 else current + counts)

    @property
    def total(self) -> int:
        """All counted pixel-bands."""
        return int(self.no_candidate.sum() + self.out_of_range.sum())


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def starfm(
    coarse_t1: np.ndarray,
    fine_t1: np.ndarray,
    coarse_t2: np.ndarray,
    *,
    class_map: np.ndarray | None = None,
    fine_t1_mask: np.ndarray | None = None,
    coarse_t1_mask: np.ndarray | None = None,
    coarse_t2_mask: np.ndarray | None = None,
    holes: HoleCounter | None = None,
    config: StarfmConfig | None = None,
    **options: Any,
) -> np.ndarray:
    """STARFM with one reference pair: the standard fusion interface (see stfusion.fusion).

    Args:
        coarse_t1, fine_t1, coarse_t2: (C, H, W) float reflectance on the fine grid; NaN = invalid.
        class_map: optional (H, W) integer classification of ``fine_t1`` (replaces the threshold
            similarity test).
        fine_t1_mask, coarse_t1_mask, coarse_t2_mask: optional (H, W) or (C, H, W) bool, True = valid.
        holes: optional :class:`HoleCounter` that receives the counts of pixels the faithful rules
            leave unpredicted although their inputs are valid (filled unless ``fill_holes=False``).
        config: a :class:`StarfmConfig` to start from; ``options`` override its fields.
        **options: StarfmConfig fields by name, plus ``preset`` and ``window_size`` (see
            :data:`OPTION_HELP`). The default preset is the spec's ``starfm_v121``; the method
            registry and the commands use ``starfm4py`` (pass ``preset="starfm4py"`` for their pixels).

    Returns:
        (C, H, W) predicted fine image at t2, float32 (float64 if any input is float64); NaN where
        the inputs are invalid (and, with ``fill_holes=False``, where the faithful rules give none).
    """
    check_fusion_inputs(coarse_t1, fine_t1, coarse_t2)
    result = starfm_multi(
        [coarse_t1],
        [fine_t1],
        coarse_t2,
        class_maps=None if class_map is None else [class_map],
        fine_masks=[fine_t1_mask],
        coarse_masks=[coarse_t1_mask],
        coarse_t2_mask=coarse_t2_mask,
        holes=holes,
        config=config,
        **options,
    )
    assert isinstance(result, np.ndarray)
    return result


def starfm_multi(
    coarse_refs: Sequence[np.ndarray],
    fine_refs: Sequence[np.ndarray],
    coarse_t2: np.ndarray,
    *,
    class_maps: Sequence[np.ndarray] | None = None,
    fine_masks: Sequence[np.ndarray | None] | None = None,
    coarse_masks: Sequence[np.ndarray | None] | None = None,
    coarse_t2_mask: np.ndarray | None = None,
    return_diagnostic: bool = False,
    holes: HoleCounter | None = None,
    config: StarfmConfig | None = None,
    **options: Any,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """STARFM with K >= 1 reference pairs, pooled into one weighted prediction (spec 3.8).

    Args:
        coarse_refs, fine_refs: K images each, (C, H, W) reflectance, pair k acquired on date t_k.
        coarse_t2: (C, H, W) coarse image at the prediction date.
        class_maps: optional K (H, W) integer class maps of the fine references.
        fine_masks, coarse_masks: optional K masks (or None entries), (H, W) or (C, H, W), True = valid.
        coarse_t2_mask: optional mask of ``coarse_t2``.
        return_diagnostic: also return ``n_used``, (C, H, W) int32, the number of candidates that
            received a weight (0 where the zero-difference copy, the fallback or a hole fill decided).
        holes, config, **options: as for :func:`starfm`.

    Returns:
        The (C, H, W) prediction, or ``(prediction, n_used)`` with ``return_diagnostic``.
    """
    cfg = make_config(config, **options)
    coarse_list, fine_list, dtype = _check_inputs(coarse_refs, fine_refs, coarse_t2)
    references = {}
    for k, (coarse, fine) in enumerate(zip(coarse_list, fine_list, strict=True)):
        references[f"coarse_refs[{k}]"], references[f"fine_refs[{k}]"] = coarse, fine
    check_reflectance("STARFM", coarse_t2=coarse_t2, **references)
    n_pairs = len(fine_list)
    n_bands, height, width = coarse_t2.shape
    classes = _check_class_maps(class_maps, n_pairs, (height, width))
    if classes is not None and cfg.similarity_bands is not None:
        raise ValueError("give either class_maps or similarity_bands, not both")
    _check_bands(cfg, n_bands)
    fmasks = _check_masks(fine_masks, n_pairs, "fine_masks", coarse_t2.shape)
    cmasks = _check_masks(coarse_masks, n_pairs, "coarse_masks", coarse_t2.shape)
    c2mask = _check_masks([coarse_t2_mask], 1, "coarse_t2_mask", coarse_t2.shape)[0]

    tolerances: np.ndarray | None = None
    if classes is None and needs_global_std(cfg):
        # In the row chunks prepare() reads (iter_source_blocks' default), so that both paths
        # round the global std identically and give identical predictions.
        acc = FineStdAccumulator()
        for top in range(0, height, _STATS_ROWS):
            chunk = slice(top, min(height, top + _STATS_ROWS))
            acc.update(
                [f[:, chunk] for f in fine_list], [None if m is None else m[..., chunk, :] for m in fmasks]
            )
        tolerances = tolerances_from_std(acc.std, cfg)
    counter = HoleCounter()  # this call's holes (``holes`` may hold earlier calls' counts)
    halo = halo_rows(cfg)
    rows = cfg.block_rows or _auto_block_rows(n_pairs, n_bands, width, halo, dtype)
    prediction = np.empty((n_bands, height, width), dtype=dtype)
    n_used = np.zeros((n_bands, height, width), dtype=np.int32) if return_diagnostic else None
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        a, b = max(0, r0 - halo), min(height, r1 + halo)

        def rows_of(x: np.ndarray | None, a: int = a, b: int = b) -> np.ndarray | None:
            if x is None:
                return None
            return x[..., a:b, :]

        out = starfm_block(
            [c[..., a:b, :] for c in coarse_list],
            [f[..., a:b, :] for f in fine_list],
            coarse_t2[..., a:b, :],
            tolerances=tolerances,
            halo_top=r0 - a,
            halo_bottom=b - r1,
            class_maps=None if classes is None else [m[a:b] for m in classes],
            fine_masks=[rows_of(m) for m in fmasks],
            coarse_masks=[rows_of(m) for m in cmasks],
            coarse_t2_mask=rows_of(c2mask),
            return_diagnostic=return_diagnostic,
            holes=counter,
            config=cfg,
        )
        if isinstance(out, tuple):
            prediction[:, r0:r1], used = out
            assert n_used is not None
            n_used[:, r0:r1] = used
        else:
            prediction[:, r0:r1] = out
    if counter.total:
        logger.info(
            "STARFM (%s): %d pixel-bands without a prediction although their inputs are valid "
            "(no candidate %s, out of range %s per band): %s",
            cfg.preset,
            counter.total,
            counter.no_candidate.tolist(),
            counter.out_of_range.tolist(),
            "filled (fill_holes=True)" if cfg.fill_holes else "left NaN (fill_holes=False)",
        )
    if holes is not None and counter.no_candidate.size:
        holes.add(counter.no_candidate, counter.out_of_range)
    if n_used is not None:
        return prediction, n_used
    return prediction


def starfm_block(
    coarse_refs: Sequence[np.ndarray],
    fine_refs: Sequence[np.ndarray],
    coarse_t2: np.ndarray,
    *,
    tolerances: np.ndarray | None = None,
    halo_top: int,
    halo_bottom: int,
    class_maps: Sequence[np.ndarray] | None = None,
    fine_masks: Sequence[np.ndarray | None] | None = None,
    coarse_masks: Sequence[np.ndarray | None] | None = None,
    coarse_t2_mask: np.ndarray | None = None,
    return_diagnostic: bool = False,
    holes: HoleCounter | None = None,
    config: StarfmConfig,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict the rows of a block that lie between its halos (for streaming; see module doc).

    The inputs are full-width row slices ``(C, n, W)`` (masks ``(n, W)`` or ``(C, n, W)``) whose
    first ``halo_top`` and last ``halo_bottom`` rows are context only. Give the full halo
    (``halo_rows(config)``) except where the image ends; missing rows count as outside the image,
    exactly as at the image border (truncated window, or zeros with ``border="zeros"``).

    Args:
        tolerances: (K, C) global similarity tolerances (:func:`similarity_tolerances` or
            :func:`tolerances_from_std`); needed when :func:`needs_global_std` is True, ignored in
            class-map mode and with ``similarity_std="local"``; with an explicit
            ``similarity_tol`` None means that value.
        halo_top, halo_bottom: context rows at the top and bottom of the inputs.
        holes: optional :class:`HoleCounter` receiving this block's hole counts.
        config: a :class:`StarfmConfig` (no option overrides here; the caller resolved them).

    Returns:
        (C, n - halo_top - halo_bottom, W) predictions [and ``n_used`` if requested].
    """
    coarse_list, fine_list, dtype = _check_inputs(coarse_refs, fine_refs, coarse_t2)
    n_pairs = len(fine_list)
    n_bands, n_rows, width = coarse_t2.shape
    halo = halo_rows(config)
    if not (0 <= halo_top <= halo and 0 <= halo_bottom <= halo):
        raise ValueError(f"halo_top/halo_bottom must be in [0, {halo}], got {halo_top, halo_bottom}")
    out_rows = n_rows - halo_top - halo_bottom
    if out_rows < 1:
        raise ValueError(f"block of {n_rows} rows has no rows left after its halos")
    _check_bands(config, n_bands)
    classes = _check_class_maps(class_maps, n_pairs, (n_rows, width))
    fmasks = _check_masks(fine_masks, n_pairs, "fine_masks", coarse_t2.shape)
    cmasks = _check_masks(coarse_masks, n_pairs, "coarse_masks", coarse_t2.shape)
    c2mask = _check_masks([coarse_t2_mask], 1, "coarse_t2_mask", coarse_t2.shape)[0]
    local_std = classes is None and config.similarity_tol is None and config.similarity_std == "local"
    if classes is None and not local_std:
        if tolerances is None:
            if config.similarity_tol is None:
                raise ValueError(
                    "starfm_block needs the (K, C) global tolerances (tolerances_from_std) for "
                    "similarity_std='global'"
                )
            tolerances = tolerances_from_std(np.zeros((n_pairs, n_bands)), config)
        tolerances = np.asarray(tolerances, dtype=np.float64)
        if tolerances.shape != (n_pairs, n_bands):
            raise ValueError(f"tolerances must have shape (K, C) = {(n_pairs, n_bands)}")

    pad_rows = (halo - halo_top, halo - halo_bottom)
    if config.border == "zeros" and halo > 0:
        # starfm4py's zero padding: outside the scene F = C_k = C_0 = 0 are valid pixels; they go
        # through the same preparation as the scene's (S = T = 0, local value 0).
        def image(x: np.ndarray) -> np.ndarray:
            return np.pad(np.asarray(x, dtype=dtype), ((0, 0), pad_rows, (halo, halo)))

        def mask(m: np.ndarray | None) -> np.ndarray | None:
            if m is None:
                return None
            pads = ((0, 0),) * (m.ndim - 2) + (pad_rows, (halo, halo))
            return np.pad(m, pads, constant_values=True)

        prep = _prepare(
            [image(c) for c in coarse_list],
            [image(f) for f in fine_list],
            image(coarse_t2),
            [mask(m) for m in fmasks],
            [mask(m) for m in cmasks],
            mask(c2mask),
            None if classes is None else [np.pad(m, (pad_rows, (halo, halo))) for m in classes],
            config,
            dtype,
        )
        padded = {name: np.ascontiguousarray(prep[name]) for name in _WINDOW_ARRAYS}
        core = (slice(halo, halo + out_rows), slice(halo, halo + width))
    else:
        prep = _prepare(coarse_list, fine_list, coarse_t2, fmasks, cmasks, c2mask, classes, config, dtype)
        # Pad to the full halo on every side with "outside the image" (NaN keys and bounds, zero
        # weights), so the blocked result equals the whole-image one.
        padded = {
            name: _pad(prep[name], pad_rows, halo, np.nan if name in ("Z", "S", "T") else 0.0)
            for name in _WINDOW_ARRAYS
        }
        core = (slice(halo_top, n_rows - halo_bottom), slice(0, width))
    if classes is not None:
        tol = np.full((n_pairs, n_bands, out_rows, width), 0.5)  # labels are integers
    elif local_std:
        tol = 2.0 * _window_std(padded["Z"], halo) / config.n_classes
    else:
        assert tolerances is not None
        tol = np.broadcast_to(tolerances[:, :, None, None], (n_pairs, n_bands, out_rows, width))
    centre = {k: v[..., core[0], core[1]] for k, v in prep.items()}
    sim_bands = _similarity_band_table(config, n_bands, classes is not None)
    inv_d = _inverse_distance(config).astype(dtype)
    need = 1 if config.filter_logic == "or" else 2  # "spectral" is "and" with an infinite T bound
    engine = _resolve_engine(config.engine)
    sb, tb = centre["Sb"], centre["Tb"]
    if engine == "numba":
        sw, swv, count = _accumulate_numba(padded, sb, tb, tol, sim_bands, inv_d, need, config)
    else:
        sw, swv, count = _accumulate_torch(
            padded, sb, tb, tol, sim_bands, inv_d, need, config, return_diagnostic
        )
    prediction, n_used, no_candidate, out_of_range = _finish(
        sw, swv, count, centre, sim_bands, tol, need, config, dtype
    )
    if holes is not None:
        holes.add(no_candidate, out_of_range)
    if return_diagnostic:
        return prediction, n_used
    return prediction


@dataclass(frozen=True)
class StarfmPrediction(RowBlocks):
    """What :func:`prepare` returns: a :class:`~stfusion.blocks.RowBlocks` plus its config and holes.

    Attributes:
        config: the resolved :class:`StarfmConfig`.
        tolerances: (K, C) global similarity tolerances, or None (window-local std, explicit
            tolerance).
        holes: :class:`HoleCounter` of every block predicted so far (log it after a scene).
    """

    config: StarfmConfig = field(default_factory=StarfmConfig)
    tolerances: np.ndarray | None = None
    holes: HoleCounter = field(default_factory=HoleCounter)


def prepare(source: SceneSource, **options: Any) -> StarfmPrediction:
    """STARFM prepared on a scene read block by block: the method registry's entry point.

    Reference pair k of ``source`` is STARFM's pair k (K >= 1, pooled, spec 3.8). When the preset
    uses the global similarity tolerance (eq. 7), the fine images are read once, block by block
    (:func:`~stfusion.blocks.iter_source_blocks`), into a :class:`FineStdAccumulator`; memory is
    bounded by the block, not the scene. The result predicts row blocks with
    ``halo_rows(config)`` rows of context through :func:`starfm_block`;
    ``predict_scene(prepare(ArraySource(pairs, coarse_t2), **options), source)`` equals
    ``starfm_multi(coarses, fines, coarse_t2, **options)`` (float32 inputs).

    Args:
        source: the scene: (C, H, W) float32 reflectance blocks, NaN = invalid.
        **options: :class:`StarfmConfig` fields, ``preset`` and ``window_size`` (see
            :data:`OPTION_HELP`); ``block_rows`` sets the rows predicted per block.

    Returns:
        A :class:`StarfmPrediction` (a :class:`~stfusion.blocks.Prediction`).

    Raises:
        ValueError: an unknown option or an invalid value (naming the option, the value and what
            is allowed), or options that do not fit the scene (per-band values, bands).
    """
    cfg = make_config(**options)
    n_pairs, n_bands = source.n_pairs, source.bands
    if n_pairs < 1:
        raise ValueError(f"STARFM needs K >= 1 reference pairs, the scene has {n_pairs}")
    _check_bands(cfg, n_bands)
    tolerances: np.ndarray | None = None
    if needs_global_std(cfg):
        acc = FineStdAccumulator()
        for block in iter_source_blocks(source, rows=_STATS_ROWS):
            acc.update([pair.fine for pair in block.pairs])
        tolerances = tolerances_from_std(acc.std, cfg)
    elif cfg.similarity_tol is not None:
        tolerances = tolerances_from_std(np.zeros((n_pairs, n_bands)), cfg)
    holes = HoleCounter()
    halo = halo_rows(cfg)

    def predict_block(block: Block, halo_top: int, halo_bottom: int) -> np.ndarray:
        out = starfm_block(
            [pair.coarse for pair in block.pairs],
            [pair.fine for pair in block.pairs],
            block.coarse_t2,
            tolerances=tolerances,
            halo_top=halo_top,
            halo_bottom=halo_bottom,
            holes=holes,
            config=cfg,
        )
        assert isinstance(out, np.ndarray)
        return out

    rows = cfg.block_rows or _auto_block_rows(n_pairs, n_bands, source.width, halo, np.dtype(np.float32))
    return StarfmPrediction(
        predict_block=predict_block,
        halo=halo,
        block_rows=rows,
        config=cfg,
        tolerances=tolerances,
        holes=holes,
    )


def _window_std(z: np.ndarray, h: int) -> np.ndarray:
    """(K, C, n, W) float64 population std of the valid non-zero values of each (2h+1)^2 window.

    ``z`` is (K, C, n + 2h, W + 2h), NaN where invalid or outside the scene (0 there with zero
    padding). Zeros are left out as starfm4py leaves them out (it turns them into NaN for its std),
    which also keeps its padding out of the statistic. The variance comes from window sums of x and
    x^2 (float64); a window whose values are all equal gets exactly 0, as a two-pass std gives
    (found from the window's min and max, which are exact), so that a flat window keeps tolerance 0.
    """
    values = z.astype(np.float64)
    used = np.isfinite(values) & (values != 0)
    values = np.where(used, values, 0.0)
    n = _window_reduce(used.astype(np.float64), h, np.add)
    safe = np.maximum(n, 1.0)
    mean = _window_reduce(values, h, np.add) / safe
    var = _window_reduce(values * values, h, np.add) / safe - mean * mean
    flat = _window_reduce(np.where(used, values, -np.inf), h, np.maximum) <= _window_reduce(
        np.where(used, values, np.inf), h, np.minimum
    )
    return np.where((n > 0) & ~flat, np.sqrt(np.maximum(var, 0.0)), 0.0)


def _window_reduce(a: np.ndarray, h: int, op: np.ufunc) -> np.ndarray:
    """``op`` over each (2h+1)^2 window of the last two axes: (..., n + 2h, W + 2h) -> (..., n, W).

    Reduces 2h + 1 shifted slices across, then down, in a fixed order (no running sums): a pixel's
    value does not depend on where its block starts.
    """
    rows, cols = a.shape[-2] - 2 * h, a.shape[-1] - 2 * h
    across = a[..., :cols].copy()
    for dx in range(1, 2 * h + 1):
        op(across, a[..., dx : dx + cols], out=across)
    total = across[..., :rows, :].copy()
    for dy in range(1, 2 * h + 1):
        op(total, across[..., dy : dy + rows, :], out=total)
    return total


# --------------------------------------------------------------------------------------------
# Preparation: per-pixel images (spec 3.1-3.7), computed once per block
# --------------------------------------------------------------------------------------------


#: The per-pixel images the window sums read (see ``_prepare``).
_WINDOW_ARRAYS = ("Z", "S", "T", "G", "P", "V")


def _prepare(
    coarse: list[np.ndarray],
    fine: list[np.ndarray],
    coarse_t2: np.ndarray,
    fmasks: list[np.ndarray | None],
    cmasks: list[np.ndarray | None],
    c2mask: np.ndarray | None,
    classes: list[np.ndarray] | None,
    cfg: StarfmConfig,
    dtype: np.dtype,
) -> dict[str, np.ndarray]:
    """Arrays of shape (K, C, n, W) unless noted, in ``dtype``.

    Z: similarity key (fine value or class label), NaN where pair k is invalid.
    S, T: spectral / temporal differences (eqs. 1-2), NaN where invalid.
    G: weight factor without the distance term, 0 where invalid or where rule (17) fires.
    P: 1 where rule (17) fires (weight exactly 1), else 0.
    V: local values (eq. 3), 0 where invalid.
    valid: bool, pair k usable at the pixel (F_k, C_k, C_0 valid).
    F: fine values (for the copy rule); Sb, Tb: (C, n, W) candidate-filter bounds (eq. 11), Tb
    infinite for the spectral-only filter.
    """
    c2 = np.asarray(coarse_t2, dtype=dtype)
    valid_c2 = np.isfinite(c2)
    if c2mask is not None:
        valid_c2 &= c2mask
    f = np.stack([np.asarray(x, dtype=dtype) for x in fine])
    c1 = np.stack([np.asarray(x, dtype=dtype) for x in coarse])
    valid = np.isfinite(f) & np.isfinite(c1) & valid_c2
    for k in range(len(fine)):
        if fmasks[k] is not None:
            valid[k] &= fmasks[k]
        if cmasks[k] is not None:
            valid[k] &= cmasks[k]
    n_pairs, n_bands = f.shape[:2]
    with np.errstate(invalid="ignore"):
        s = np.where(valid, np.abs(f - c1), np.nan).astype(dtype)
        t = np.where(valid, np.abs(c1 - c2), np.nan).astype(dtype)
        v = np.where(valid, f + c2 - c1, 0.0).astype(dtype)
    if classes is None:
        z = np.where(valid, f, np.nan).astype(dtype)
    else:
        labels = np.stack(classes).astype(dtype)[:, None]
        z = np.where(valid, labels, np.nan).astype(dtype)

    b = cfg.dn_scale
    temporal = cfg.temporal_weight is True or (cfg.temporal_weight == "auto" and n_pairs >= 2)
    sig_f = _per_band(cfg.sigma_fine, n_bands, "sigma_fine")
    sig_c = _per_band(cfg.sigma_coarse, n_bands, "sigma_coarse")
    sig_s = np.sqrt(sig_f**2 + sig_c**2)
    sig_t = np.sqrt(2.0) * sig_c
    sig_sum = np.sqrt(sig_s**2 + sig_t**2)
    s64 = np.where(valid, s, 0.0).astype(np.float64)
    t64 = np.where(valid, t, 0.0).astype(np.float64)
    if cfg.weighting == "direct":
        denom = (b * s64 + 1.0) * ((b * t64 + 1.0) if temporal else 1.0)
        pure = denom < (b * sig_sum)[None, :, None, None]
        pure &= valid & cfg.uncertainty_max_weight
    else:
        denom = np.log(b * s64 + 2.0) * (np.log(b * t64 + 2.0) if temporal else 1.0)
        pure = np.zeros_like(valid)
    g = np.where(valid & ~pure, 1.0 / denom, 0.0).astype(dtype)
    p = pure.astype(dtype)

    reduce = np.fmin if cfg.center_reference == "min" else np.fmax
    with np.errstate(invalid="ignore"):
        s_star = reduce.reduce(s, axis=0)
        t_star = reduce.reduce(t, axis=0)
    sb = (s_star + sig_s[:, None, None]).astype(dtype)
    tb = (t_star + sig_t[:, None, None]).astype(dtype)
    if cfg.filter_logic == "spectral":
        tb = np.full_like(tb, np.inf)
    return {
        "Z": z, "S": s, "T": t, "G": g, "P": p, "V": v, "valid": valid, "F": f,
        "C2": c2, "valid_c2": valid_c2, "Sb": sb, "Tb": tb,
    }  # fmt: skip


def _per_band(value: FloatOrPerBand, n_bands: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.size == 1:
        return np.full(n_bands, float(arr[0]))
    if arr.size != n_bands:
        raise ValueError(f"{name} has {arr.size} values but the images have {n_bands} bands")
    return arr


def _inverse_distance(cfg: StarfmConfig) -> np.ndarray:
    """(2h+1, 2h+1) 1 / D with D = 1 + d / A (eq. 13)."""
    h = halo_rows(cfg)
    scale = cfg.distance_scale if cfg.distance_scale is not None else max(cfg.half_window, 1)
    offsets = np.arange(-h, h + 1, dtype=np.float64)
    dist = np.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)
    return 1.0 / (1.0 + dist / scale)


def _similarity_band_table(cfg: StarfmConfig, n_bands: int, class_mode: bool) -> np.ndarray:
    """(C, nsel) int64: the bands whose similarity test band c's candidates must pass."""
    if cfg.similarity_bands is None or class_mode:
        return np.arange(n_bands, dtype=np.int64)[:, None]
    sel = np.asarray(cfg.similarity_bands, dtype=np.int64)
    return np.broadcast_to(sel, (n_bands, sel.size)).copy()


def _is_joint(sim_bands: np.ndarray) -> bool:
    """True unless band c's similarity uses band c alone (the per-band test)."""
    per_band = sim_bands.shape[1] == 1 and np.array_equal(sim_bands[:, 0], np.arange(sim_bands.shape[0]))
    return not per_band


def _pad(x: np.ndarray, rows: tuple[int, int], cols: int, value: float) -> np.ndarray:
    if rows == (0, 0) and cols == 0:
        return np.ascontiguousarray(x)
    return np.pad(x, ((0, 0), (0, 0), rows, (cols, cols)), constant_values=value)


# --------------------------------------------------------------------------------------------
# Engines: sum of weights, weighted local values and candidate count over the window
# --------------------------------------------------------------------------------------------


def _resolve_engine(engine: str) -> str:
    if engine == "auto":
        return "numba" if numba is not None else "torch"
    if engine == "numba" and numba is None:
        raise ValueError("engine='numba' needs the numba package; install it or use engine='torch'")
    return engine


@functools.cache
def _numba_kernels() -> tuple[Any, Any]:
    """(per-band kernel, joint-similarity kernel), compiled on first use and cached on disk.

    Both fill sw, swv (float64) and cnt (int32), (C, n, W): the sums over the window and pairs of
    the candidate weights, weights x local values and candidate counts. Inputs are (K, C, n + 2h,
    W + 2h) padded images (see ``_prepare``) and (K, C, n, W) tolerances of the target pixels; the
    similarity key of band c is band c of ``z`` (per-band kernel) or every band listed in
    ``simb[c]`` (joint kernel).
    """
    # reassoc/contract let LLVM vectorise the inner sums; no "nnan": NaN marks invalid pixels.
    flags = {"reassoc", "contract", "nsz", "arcp"}
    jit = numba.njit(parallel=True, fastmath=flags, cache=True)

    @jit
    def per_band(z, s, t, g, p, v, sb, tb, tol, simb, inv_d, or_mode, sw, swv, cnt):  # type: ignore[no-untyped-def]
        n_pairs, n_bands, rows_p, cols_p = z.shape
        side = inv_d.shape[0]
        h = side // 2
        n_rows = rows_p - 2 * h
        n_cols = cols_p - 2 * h
        zero = z.dtype.type(0)
        one = z.dtype.type(1)
        for job in numba.prange(n_bands * n_rows):
            c = job // n_rows
            r = job % n_rows
            for x in range(n_cols):
                sbound = sb[c, r, x]
                tbound = tb[c, r, x]
                acc_w = 0.0
                acc_wv = 0.0
                acc_n = 0.0
                for k in range(n_pairs):
                    zc = z[k, c, r + h, x + h]
                    tl = tol[k, c, r, x]
                    for dy in range(side):
                        rr = r + dy
                        row_w = zero
                        row_wv = zero
                        row_n = zero
                        for dx in range(side):
                            s_ok = s[k, c, rr, x + dx] <= sbound
                            t_ok = t[k, c, rr, x + dx] <= tbound
                            sim = abs(z[k, c, rr, x + dx] - zc) < tl
                            ok = sim & (s_ok | t_ok) if or_mode else sim & s_ok & t_ok
                            okf = one if ok else zero
                            w = (g[k, c, rr, x + dx] * inv_d[dy, dx] + p[k, c, rr, x + dx]) * okf
                            row_w += w
                            row_wv += w * v[k, c, rr, x + dx]
                            row_n += okf
                        acc_w += row_w
                        acc_wv += row_wv
                        acc_n += row_n
                sw[c, r, x] = acc_w
                swv[c, r, x] = acc_wv
                cnt[c, r, x] = np.int32(acc_n)

    @jit
    def joint(z, s, t, g, p, v, sb, tb, tol, simb, inv_d, or_mode, sw, swv, cnt):  # type: ignore[no-untyped-def]
        n_pairs, n_bands, rows_p, cols_p = z.shape
        side = inv_d.shape[0]
        h = side // 2
        n_rows = rows_p - 2 * h
        n_cols = cols_p - 2 * h
        n_sel = simb.shape[1]
        for job in numba.prange(n_bands * n_rows):
            c = job // n_rows
            r = job % n_rows
            for x in range(n_cols):
                acc_w = 0.0
                acc_wv = 0.0
                acc_n = 0
                for k in range(n_pairs):
                    if np.isnan(s[k, c, r + h, x + h]):
                        continue  # pair k invalid at the centre in this band: no candidates
                    for dy in range(side):
                        rr = r + dy
                        for dx in range(side):
                            sim = True
                            for j in range(n_sel):
                                b = simb[c, j]
                                diff = abs(z[k, b, rr, x + dx] - z[k, b, r + h, x + h])
                                sim &= diff < tol[k, b, r, x]
                            s_ok = s[k, c, rr, x + dx] <= sb[c, r, x]
                            t_ok = t[k, c, rr, x + dx] <= tb[c, r, x]
                            if sim and ((s_ok or t_ok) if or_mode else (s_ok and t_ok)):
                                w = g[k, c, rr, x + dx] * inv_d[dy, dx] + p[k, c, rr, x + dx]
                                acc_w += w
                                acc_wv += w * v[k, c, rr, x + dx]
                                acc_n += 1
                sw[c, r, x] = acc_w
                swv[c, r, x] = acc_wv
                cnt[c, r, x] = acc_n

    return per_band, joint


def _accumulate_numba(
    arrays: dict[str, np.ndarray],
    sb: np.ndarray,
    tb: np.ndarray,
    tol: np.ndarray,
    sim_bands: np.ndarray,
    inv_d: np.ndarray,
    need: int,
    cfg: StarfmConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dtype = arrays["Z"].dtype
    shape = sb.shape
    sw = np.zeros(shape, np.float64)
    swv = np.zeros(shape, np.float64)
    cnt = np.zeros(shape, np.int32)
    per_band, joint = _numba_kernels()
    kernel = joint if _is_joint(sim_bands) else per_band
    previous = numba.get_num_threads()
    if cfg.num_threads is not None:
        numba.set_num_threads(min(cfg.num_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        kernel(
            arrays["Z"], arrays["S"], arrays["T"], arrays["G"], arrays["P"], arrays["V"],
            np.ascontiguousarray(sb), np.ascontiguousarray(tb), np.ascontiguousarray(tol, dtype=dtype),
            sim_bands,
            np.ascontiguousarray(inv_d), need == 1, sw, swv, cnt,
        )  # fmt: skip
    finally:
        numba.set_num_threads(previous)
    return sw, swv, cnt


def _accumulate_torch(
    arrays: dict[str, np.ndarray],
    sb: np.ndarray,
    tb: np.ndarray,
    tol: np.ndarray,
    sim_bands: np.ndarray,
    inv_d: np.ndarray,
    need: int,
    cfg: StarfmConfig,
    count: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch  # imported here: the numba path should not pay torch's ~200 MB import

    device = torch.device(cfg.device)
    tz = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
    n_pairs, n_bands = arrays["Z"].shape[:2]
    n_rows, n_cols = sb.shape[1:]
    h = inv_d.shape[0] // 2
    side = 2 * h + 1
    dtype = tz["Z"].dtype
    t_sb = torch.from_numpy(np.ascontiguousarray(sb)).to(device)[None, ..., None]
    t_tb = torch.from_numpy(np.ascontiguousarray(tb)).to(device)[None, ..., None]
    t_inv_d = torch.from_numpy(inv_d).to(device)
    joint = _is_joint(sim_bands)
    sel = torch.from_numpy(sim_bands[0]).to(device)
    t_tol = torch.from_numpy(np.ascontiguousarray(tol)).to(device=device, dtype=dtype)
    t_tol = (t_tol[:, sel] if joint else t_tol)[..., None]  # (K, C or nsel, n, W, 1)
    sw = torch.zeros((n_bands, n_rows, n_cols), dtype=torch.float64, device=device)
    swv = torch.zeros_like(sw)
    cnt = torch.zeros((n_bands, n_rows, n_cols), dtype=torch.int32, device=device)
    # Rows per chunk: keep the (K, C, rows, W, 2h+1) temporaries around 1 Mi elements (cache).
    chunk = max(1, 2**20 // max(1, n_pairs * n_bands * n_cols * side))
    previous = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        for r0 in range(0, n_rows, chunk):
            r1 = min(n_rows, r0 + chunk)
            zc = tz["Z"][:, :, h + r0 : h + r1, h : h + n_cols]
            if joint:
                zc = zc[:, sel]
                centre_ok = ~torch.isnan(tz["S"][:, :, h + r0 : h + r1, h : h + n_cols])[..., None]
            sbc, tbc, tolc = t_sb[:, :, r0:r1], t_tb[:, :, r0:r1], t_tol[:, :, r0:r1]
            for dy in range(side):
                rows = slice(r0 + dy, r1 + dy)

                def win(name: str, rows: slice = rows) -> torch.Tensor:
                    return tz[name][:, :, rows, :].unfold(-1, side, 1)

                zw = win("Z")[:, sel] if joint else win("Z")
                sim = (zw - zc[..., None]).abs_() < tolc
                if joint:
                    sim = sim.all(dim=1, keepdim=True) & centre_ok
                s_ok, t_ok = win("S") <= sbc, win("T") <= tbc
                filt = (s_ok & t_ok) if need == 2 else (s_ok | t_ok)
                ok = sim & filt
                w = torch.where(ok, win("G") * t_inv_d[dy] + win("P"), 0.0)
                sw[:, r0:r1] += w.sum(dim=(0, -1))
                swv[:, r0:r1] += (w * win("V")).sum(dim=(0, -1))
                if count:
                    cnt[:, r0:r1] += ok.sum(dim=(0, -1), dtype=torch.int32)
    finally:
        torch.set_num_threads(previous)
    return sw.cpu().numpy(), swv.cpu().numpy(), cnt.cpu().numpy()


# --------------------------------------------------------------------------------------------
# Final steps: centre rule, prediction, zero-difference copy, fallback, range (spec 3.4-3.10)
# --------------------------------------------------------------------------------------------


def _finish(
    sw: np.ndarray,
    swv: np.ndarray,
    count: np.ndarray,
    centre: dict[str, np.ndarray],
    sim_bands: np.ndarray,
    tol: np.ndarray,
    need: int,
    cfg: StarfmConfig,
    dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Prediction (C, n, W), n_used (C, n, W) and the per-band hole counts (no candidate, out of range).

    ``centre`` holds the ``_prepare`` images of the target pixels, ``tol`` (K, C, n, W) their
    similarity tolerances.
    """
    valid = centre["valid"]  # (K, C, n, W)
    count = count.astype(np.int32, copy=True)
    # "The centre is always similar to itself" (spec 3.5): add the centre where the window sum
    # missed it (tolerance 0, or an invalid joint-similarity band at the centre).
    z = centre["Z"]
    with np.errstate(invalid="ignore"):
        for k in range(valid.shape[0]):
            looped = np.ones(valid.shape[1:], dtype=bool)
            for j in range(sim_bands.shape[1]):
                band = sim_bands[:, j]
                looped &= np.isfinite(z[k, band]) & (tol[k, band] > 0)
            passes = (centre["S"][k] <= centre["Sb"]).astype(np.int32) + (centre["T"][k] <= centre["Tb"])
            add = valid[k] & ~looped & (passes >= need)
            w = centre["G"][k].astype(np.float64) + centre["P"][k]
            sw = sw + np.where(add, w, 0.0)
            swv = swv + np.where(add, w * centre["V"][k], 0.0)
            count += add
    with np.errstate(invalid="ignore", divide="ignore"):
        prediction = np.where(sw > 0, swv / np.where(sw > 0, sw, 1.0), np.nan)
        none = sw <= 0
        # Inputs valid at the pixel: C_0 and at least one pair (``valid`` includes C_0).
        n_valid = valid.sum(axis=0)
        has_input = n_valid > 0
        local = np.where(valid, centre["V"], 0.0).sum(axis=0) / np.where(has_input, n_valid, 1)
        local = np.where(has_input, local, np.nan)
        if cfg.fallback == "local":
            prediction = np.where(none, local, prediction)
        if cfg.copy_on_zero_diff:
            t_zero = valid & (centre["T"] == 0)
            s_zero = valid & (centre["S"] == 0)
            any_t = t_zero.any(axis=0)
            copy_t = np.where(t_zero, centre["F"], 0.0).sum(axis=0) / t_zero.sum(axis=0)
            copied = any_t | s_zero.any(axis=0)
            prediction = np.where(any_t, copy_t, np.where(s_zero.any(axis=0), centre["C2"], prediction))
            count[copied] = 0
        prediction = np.where(centre["valid_c2"], prediction, np.nan)
        no_candidate = has_input & np.isnan(prediction)  # fallback "nodata" with an empty Q(x)
        outside = np.zeros_like(no_candidate)
        low, high = cfg.valid_range
        if cfg.out_of_range == "nodata":
            outside = np.isfinite(prediction) & ~((prediction > low) & (prediction < high))
            # Holes filled (fill_holes): the method's own estimate, bounded to the closed range.
            replacement = np.clip(prediction, low, high) if cfg.fill_holes else np.nan
            prediction = np.where(outside, replacement, prediction)
        if cfg.fill_holes:
            fill = np.clip(local, low, high) if cfg.out_of_range == "nodata" else local
            prediction = np.where(no_candidate, fill, prediction)
    count[none] = 0
    return (
        prediction.astype(dtype),
        count,
        no_candidate.sum(axis=(1, 2), dtype=np.int64),
        outside.sum(axis=(1, 2), dtype=np.int64),
    )


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_inputs(
    coarse_refs: Sequence[np.ndarray], fine_refs: Sequence[np.ndarray], coarse_t2: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], np.dtype]:
    coarse_list, fine_list = list(coarse_refs), list(fine_refs)
    if len(fine_list) == 0 or len(coarse_list) != len(fine_list):
        raise ValueError(
            f"STARFM needs K >= 1 reference pairs: got {len(coarse_list)} coarse and "
            f"{len(fine_list)} fine reference images"
        )
    images = [("coarse_t2", coarse_t2)]
    images += [(f"coarse_refs[{k}]", c) for k, c in enumerate(coarse_list)]
    images += [(f"fine_refs[{k}]", f) for k, f in enumerate(fine_list)]
    for name, image in images:
        if not isinstance(image, np.ndarray) or image.ndim != 3:
            raise ValueError(f"{name} must be a (C, H, W) array, got {getattr(image, 'shape', image)}")
        if image.shape != coarse_t2.shape:
            raise ValueError(f"{name} has shape {image.shape}, coarse_t2 has {coarse_t2.shape}")
        if image.dtype.kind != "f":
            raise ValueError(
                f"{name} has dtype {image.dtype}; STARFM takes float reflectance (0..1): "
                "convert stored integers with stfusion.transforms.to_reflectance"
            )
    wide = any(image.dtype == np.float64 for _, image in images)
    return coarse_list, fine_list, np.dtype(np.float64 if wide else np.float32)


def _check_class_maps(
    class_maps: Sequence[np.ndarray] | None, n_pairs: int, shape: tuple[int, int]
) -> list[np.ndarray] | None:
    if class_maps is None:
        return None
    maps = [np.asarray(m) for m in class_maps]
    if len(maps) != n_pairs:
        raise ValueError(f"class_maps has {len(maps)} maps for {n_pairs} reference pairs")
    for k, m in enumerate(maps):
        if m.shape != shape or m.dtype.kind not in "iub":
            raise ValueError(
                f"class_maps[{k}] must be an integer (H, W) = {shape} array, got {m.dtype} {m.shape}"
            )
        if m.size and np.abs(m.astype(np.int64)).max() >= 2**24:
            raise ValueError(f"class_maps[{k}] labels must be below 2**24 in magnitude")
    return maps


def _check_masks(
    masks: Sequence[np.ndarray | None] | None, n: int, name: str, shape: tuple[int, ...]
) -> list[np.ndarray | None]:
    if masks is None:
        return [None] * n
    out: list[np.ndarray | None] = []
    if len(masks) != n:
        raise ValueError(f"{name} has {len(masks)} entries, expected {n}")
    for k, m in enumerate(masks):
        if m is None:
            out.append(None)
            continue
        arr = np.asarray(m)
        if arr.dtype != bool or arr.shape not in (shape, shape[1:]):
            raise ValueError(
                f"{name}[{k}] must be a bool array of shape {shape[1:]} or {shape} "
                f"(True = valid), got {arr.dtype} {arr.shape}"
            )
        out.append(arr)
    return out


def _check_bands(cfg: StarfmConfig, n_bands: int) -> None:
    if cfg.similarity_bands is not None and max(cfg.similarity_bands) >= n_bands:
        raise ValueError(f"similarity_bands {cfg.similarity_bands} refer to bands beyond the {n_bands} given")
    _per_band(cfg.sigma_fine, n_bands, "sigma_fine")
    _per_band(cfg.sigma_coarse, n_bands, "sigma_coarse")


def _auto_block_rows(n_pairs: int, n_bands: int, width: int, halo: int, dtype: np.dtype) -> int:
    # ~14 per-pixel arrays of (K, C) planes live per block (inputs, prepared images, padding).
    per_row = 14 * n_pairs * n_bands * (width + 2 * halo) * np.dtype(dtype).itemsize
    return max(1, _BLOCK_BUDGET_BYTES // per_row - 2 * halo, halo, 16)


__all__ = [
    "OPTION_HELP",
    "PRESETS",
    "FineStdAccumulator",
    "HoleCounter",
    "StarfmConfig",
    "StarfmPrediction",
    "halo_rows",
    "make_config",
    "needs_global_std",
    "prepare",
    "similarity_tolerances",
    "starfm",
    "starfm_block",
    "starfm_multi",
    "tolerances_from_std",
]

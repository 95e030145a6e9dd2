"""ESTARFM: Enhanced STARFM (Zhu, Chen, Gao, Chen & Masek 2010), two reference pairs.

Implements ``docs/specs/ESTARFM.md`` (section numbers below refer to it). Arrays are reflectance
(0..1) on the fine grid, bands first: ``(C, H, W)``; NaN marks invalid pixels (section 3.0: a pixel is
valid when every band of the five images is finite). Pair 1 is (``coarse_t1``, ``fine_t1``), pair 2 is
(``coarse_t3``, ``fine_t3``); ``coarse_t2`` is the coarse image at the target date.

Presets (section 4): ``"idl"`` (default; Zhu's maintained IDL program, 2018), ``"idl_legacy"`` (the
pre-2018 rules of the derived implementations) and ``"paper"`` (the paper's rules; its per-coarse-cell
regression needs ``coarse_factor``, or ``v_scope="window"``). Every switch is a field of
:class:`EstarfmConfig` and a keyword option of :func:`estarfm` and :func:`prepare`.

Computation (section 9): per row block, per-pixel images (similarity key, correlation R in float64,
coarse values and changes) are built once; a numba kernel, parallel over output rows, visits the
(2h+1)^2 window of every target pixel once, accumulating in float64 the count and weights of the
similar pixels, the weighted coarse changes and the regression sums that give V, then finishes the
pixel (V, T, prediction, range repair or fallback). Window means for the temporal weights come from a
separable box sum. All per-pixel sums run in an order fixed relative to the target pixel, so a row
block with a halo of :func:`halo_rows` rows and the global tolerances gives exactly the untiled result
(section 8, invariant 9).

Streaming use: :func:`prepare` computes the global tolerances with one pass of
:class:`FineStdAccumulator` over the scene's row blocks and returns a :class:`~stfusion.blocks.RowBlocks`
whose blocks call :func:`estarfm_block`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import numba
import numpy as np
from scipy import stats

from stfusion.blocks import ArraySource, Block, RowBlocks, SceneSource, check_reflectance, iter_source_blocks

VGate = Literal["change", "std", "none"]
VScope = Literal["window", "coarse_cell"]
Fallback = Literal["change", "centre"]

#: Default threshold of each V gate (section 3.5): mean coarse change 0.02, or 0.002 * sqrt(2) (the
#: IDL's 0.002 * sqrt(2) * DN_max in reflectance) for the sample standard deviation.
GATE_DEFAULTS: dict[str, float] = {"change": 0.02, "std": 0.002 * math.sqrt(2.0), "none": 0.0}

#: R within this of 1 counts as R = 1 for the paper's weighting rule (section 3.4).
_R_ONE_ATOL = 1e-12

#: Preset switches (section 4); everything else keeps the EstarfmConfig defaults (= ``idl``).
PRESETS: dict[str, dict[str, Any]] = {
    "idl": {},
    "idl_legacy": {"v_gate": "std", "fallback": "centre"},
    "paper": {
        "tol_ddof": 0,
        "similar_strict": False,
        "min_similar": 1,
        "weight_eps": 0.0,
        "r_one_rule": True,
        "v_gate": "none",
        "v_slope_range": None,
        "v_scope": "coarse_cell",
        "range_fix": False,
    },
}

#: One-line help of every user-facing option (for the method registry and the CLI).
OPTION_HELP: dict[str, str] = {
    "preset": "rule set: 'idl' (Zhu's 2018 IDL program, default), 'idl_legacy' (pre-2018 rules), "
    "'paper' (Zhu et al. 2010; needs coarse_factor or v_scope='window')",
    "half_window": "h: the search window is (2h+1) x (2h+1) fine pixels (IDL w = 25)",
    "n_classes": "m: similarity tolerance 2 * std(fine) / m per date and band",
    "tol_ddof": "delta degrees of freedom of that std: 1 (IDL) or 0 (population)",
    "similar_strict": "similar means |difference| < tolerance (True, IDL) or <= (False, paper)",
    "min_similar": "fewer similar pixels than this use the fallback prediction",
    "max_similar": "keep only the n most similar pixels (ESTARFM_FAST: 20); None keeps all",
    "r_nan": "spectral correlation R used where it is undefined (constant spectra)",
    "weight_eps": "epsilon added to (1 - R) * D in the weight 1 / ((1 - R) D + eps)",
    "r_one_rule": "paper rule: similar pixels with R = 1 share all the weight",
    "v_gate": "when to fit the conversion coefficient V: 'change' (mean coarse change), 'std' "
    "(coarse std), 'none' (always)",
    "v_gate_value": "threshold of the V gate, reflectance (default 0.02 for 'change', 0.002828 for 'std')",
    "v_alpha": "significance level of the F-test that accepts the fitted V",
    "v_slope_range": "accepted V as (low, high]: (0, 5) in the IDL; None accepts any slope",
    "v_scope": "V fitted over the similar pixels of the 'window' or per 'coarse_cell' (paper)",
    "coarse_factor": "fine pixels per coarse pixel side for v_scope='coarse_cell' (16: 500 m on 30 m)",
    "temporal_eps": "epsilon of the temporal weights 1 / (|coarse change| + eps)",
    "valid_range": "(low, high) reflectance range; predictions outside are repaired if range_fix",
    "range_fix": "replace predictions <= low or >= high by the weighted fine mean of the similar pixels",
    "fallback": "prediction with too few similar pixels: 'change' (fine + window coarse change) or "
    "'centre' (fine only)",
    "idl_blocks": "emulate the IDL's independent n x n blocks (no halo, std per block); None = global",
    "block_rows": "output rows per processing block (memory only; None = automatic)",
}

#: Working-set budget used to choose ``block_rows`` automatically (bytes of per-block arrays).
_BLOCK_BUDGET_BYTES = 64 * 2**20


@dataclass(frozen=True)
class EstarfmConfig:
    """All ESTARFM switches (spec section 2); build with :meth:`from_preset`.

    Attributes:
        preset: name of the preset the switches started from (recorded for provenance).
        half_window: h; window (2h+1) x (2h+1), clipped at the image border; D = 1 + distance / h.
        n_classes: m; tolerance tol = 2 * std(F_k[b]) / m over valid pixels.
        tol_ddof: ddof of that std (1 = IDL STDDEV, 0 = population).
        similar_strict: ``|F_k(p) - F_k(x)| < tol`` (True) or ``<=`` (False), for both dates, all bands.
        min_similar: fewer similar pixels than this use the fallback (section 3.8).
        max_similar: keep the n pixels with the smallest normalised difference (ESTARFM_FAST); None = all.
        r_nan: R where the correlation is undefined.
        weight_eps: epsilon_w of eq. 6.
        r_one_rule: if some similar pixels have R = 1 (within 1e-12) they share the weight equally.
        v_gate: "change", "std" or "none" (section 3.5); ``v_gate_value`` None means the gate's default.
        v_alpha: F-test level; V is accepted when p <= v_alpha.
        v_slope_range: accepted slopes (low, high]; None accepts any slope.
        v_scope: "window" (one V per band from the window's similar pixels) or "coarse_cell".
        coarse_factor: s, the coarse cell side in fine pixels (cells aligned with pixel (0, 0)).
        temporal_eps: epsilon_t of eq. 8.
        valid_range: (low, high) of the range repair (eq. 10).
        range_fix: apply the range repair.
        fallback: "change" (eq. 11) or "centre" (eq. 12).
        idl_blocks: emulate the IDL's independent n x n blocks (section 6); None = global computation.
        block_rows: output rows per processing block (None: from a ~64 MiB budget); results do not
            depend on it.
    """

    preset: str = "idl"
    half_window: int = 25
    n_classes: float = 4
    tol_ddof: int = 1
    similar_strict: bool = True
    min_similar: int = 6
    max_similar: int | None = None
    r_nan: float = 0.5
    weight_eps: float = 1e-7
    r_one_rule: bool = False
    v_gate: VGate = "change"
    v_gate_value: float | None = None
    v_alpha: float = 0.05
    v_slope_range: tuple[float, float] | None = (0.0, 5.0)
    v_scope: VScope = "window"
    coarse_factor: int | None = None
    temporal_eps: float = 1e-14
    valid_range: tuple[float, float] = (0.0, 1.0)
    range_fix: bool = True
    fallback: Fallback = "change"
    idl_blocks: int | None = None
    block_rows: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"ESTARFM option {name}={getattr(self, name)!r} is invalid: {allowed}")

        if self.preset not in PRESETS:
            raise ValueError(f"unknown ESTARFM preset {self.preset!r}; choose from {sorted(PRESETS)}")
        for name, choices in (
            ("v_gate", ("change", "std", "none")),
            ("v_scope", ("window", "coarse_cell")),
            ("fallback", ("change", "centre")),
        ):
            if getattr(self, name) not in choices:
                raise bad(name, f"choose from {choices}")
        for name in ("similar_strict", "r_one_rule", "range_fix"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise bad(name, "must be True or False")
        if not _is_int(self.half_window) or self.half_window < 1:
            raise bad("half_window", "must be an integer >= 1 (pixels)")
        if not (_is_number(self.n_classes) and math.isfinite(self.n_classes) and self.n_classes > 0):
            raise bad("n_classes", "must be a number > 0")
        if self.tol_ddof not in (0, 1):
            raise bad("tol_ddof", "must be 0 or 1")
        if not _is_int(self.min_similar) or self.min_similar < 1:
            raise bad("min_similar", "must be an integer >= 1")
        if self.max_similar is not None:
            if not _is_int(self.max_similar) or self.max_similar < self.min_similar:
                raise bad("max_similar", f"must be None or an integer >= min_similar ({self.min_similar})")
            if self.v_scope == "coarse_cell":
                raise bad("max_similar", "is not supported with v_scope='coarse_cell'; use v_scope='window'")
        if not (_is_number(self.r_nan) and -1.0 <= self.r_nan <= 1.0):
            raise bad("r_nan", "must be in [-1, 1]")
        if not (_is_number(self.weight_eps) and self.weight_eps >= 0 and math.isfinite(self.weight_eps)):
            raise bad("weight_eps", "must be a finite number >= 0")
        if self.weight_eps == 0 and not self.r_one_rule:
            raise bad("weight_eps", "must be > 0 unless r_one_rule=True (R = 1 would give infinite weights)")
        if self.v_gate_value is not None and not (_is_number(self.v_gate_value) and self.v_gate_value >= 0):
            raise bad("v_gate_value", "must be None or a reflectance >= 0")
        if not (_is_number(self.v_alpha) and 0 < self.v_alpha < 1):
            raise bad("v_alpha", "must be in (0, 1)")
        if self.v_slope_range is not None:
            lo_hi = tuple(self.v_slope_range)
            if len(lo_hi) != 2 or not all(_is_number(v) for v in lo_hi) or not lo_hi[0] < lo_hi[1]:
                raise bad("v_slope_range", "must be None or (low, high) with low < high")
        if self.coarse_factor is not None and (not _is_int(self.coarse_factor) or self.coarse_factor < 1):
            raise bad("coarse_factor", "must be None or an integer >= 1 (fine pixels per coarse pixel side)")
        if self.v_scope == "coarse_cell" and self.coarse_factor is None:
            raise ValueError(
                f"ESTARFM preset {self.preset!r} with v_scope='coarse_cell' needs coarse_factor (fine "
                "pixels per coarse pixel side, e.g. coarse_factor=16 for MODIS 500 m on Landsat 30 m); "
                "give coarse_factor=..., or v_scope='window' to fit V over the window's similar pixels"
            )
        if not (_is_number(self.temporal_eps) and self.temporal_eps > 0 and math.isfinite(self.temporal_eps)):
            raise bad("temporal_eps", "must be a finite number > 0")
        lo_hi = tuple(self.valid_range)
        if len(lo_hi) != 2 or not all(_is_number(v) for v in lo_hi) or not lo_hi[0] < lo_hi[1]:
            raise bad("valid_range", "must be (low, high) with low < high (reflectance)")
        if self.idl_blocks is not None:
            if not _is_int(self.idl_blocks) or self.idl_blocks < 1:
                raise bad("idl_blocks", "must be None or an integer >= 1 (block side in pixels, IDL: 500)")
            if self.v_scope == "coarse_cell":
                raise bad("idl_blocks", "emulates the IDL program, which has no v_scope='coarse_cell'")
        if self.block_rows is not None and (not _is_int(self.block_rows) or self.block_rows < 1):
            raise bad("block_rows", "must be None or an integer >= 1")

    @classmethod
    def from_preset(cls, name: str = "idl", **overrides: Any) -> EstarfmConfig:
        """The preset's switches (section 4) with ``overrides`` (field names) applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown ESTARFM preset {name!r}; choose from {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"preset"}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown ESTARFM option(s) {unknown}; valid options: {sorted(fields)}")
        return cls(preset=name, **{**PRESETS[name], **_normalise(overrides)})

    @property
    def gate_threshold(self) -> float:
        """The V gate's threshold (reflectance): ``v_gate_value`` or the gate's default."""
        return float(GATE_DEFAULTS[self.v_gate] if self.v_gate_value is None else self.v_gate_value)


@dataclass(frozen=True)
class EstarfmDiagnostics:
    """Per-pixel details of a prediction (section 1).

    Attributes:
        n_similar: (H, W) int32, similar pixels used (after ``max_similar``); 0 at invalid targets.
        V: (C, H, W) conversion coefficients; 1 where not fitted or rejected and at fallback pixels;
            with ``v_scope="coarse_cell"`` the weight-averaged V of the cells; NaN at invalid targets.
        T1: (C, H, W) temporal weight of pair 1 (T3 = 1 - T1); NaN at invalid targets.
        fallback: (H, W) bool, the fallback prediction was used.
    """

    n_similar: np.ndarray
    V: np.ndarray
    T1: np.ndarray
    fallback: np.ndarray


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _normalise(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    for key in ("v_slope_range", "valid_range"):
        if out.get(key) is not None:
            out[key] = tuple(float(v) for v in out[key])
    return out


def make_config(
    config: EstarfmConfig | None = None, preset: str | None = None, **options: Any
) -> EstarfmConfig:
    """Resolve ``config`` / ``preset`` / field overrides into one :class:`EstarfmConfig`.

    Give a ``preset`` (default ``"idl"``) or a ``config`` to start from, not both; ``options`` are
    field names and override it.
    """
    if config is not None:
        if preset is not None:
            raise ValueError("give either preset or config (a config already carries its preset), not both")
        fields = {f.name for f in dataclasses.fields(EstarfmConfig)} - {"preset"}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f"unknown ESTARFM option(s) {unknown}; valid options: {sorted(fields)}")
        return dataclasses.replace(config, **_normalise(options))
    return EstarfmConfig.from_preset("idl" if preset is None else preset, **options)


def halo_rows(config: EstarfmConfig) -> int:
    """Context rows needed above and below a block: h, plus s - 1 for the coarse cells touching it."""
    if config.idl_blocks is not None:
        return 0
    extra = config.coarse_factor - 1 if config.v_scope == "coarse_cell" and config.coarse_factor else 0
    return config.half_window + extra


# --------------------------------------------------------------------------------------------
# Global statistic: the similarity tolerances (section 3.1)
# --------------------------------------------------------------------------------------------


class FineStdAccumulator:
    """Standard deviation of each band of the two fine images over valid pixels, block by block.

    Feed every row block once (no halo overlap) with its validity mask, then read :meth:`std`. Chan's
    pairwise update in float64: the result does not depend on the blocking beyond rounding, and the
    same blocks always give the same bits.
    """

    def __init__(self) -> None:
        self.count = 0.0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, fine_t1: np.ndarray, fine_t3: np.ndarray, valid: np.ndarray) -> None:
        """Add rows: ``fine_t1``, ``fine_t3`` (C, n, W) reflectance; ``valid`` (n, W) bool (section 3.0)."""
        valid = np.asarray(valid, dtype=bool)
        n = float(valid.sum())
        # (2, C, n_valid): only valid pixels; NaN elsewhere never enters.
        values = np.stack([np.asarray(f, dtype=np.float64)[:, valid] for f in (fine_t1, fine_t3)])
        if n > 0:
            # Deviations from the first value: a constant band gets exactly std 0 (tol 0, section 3.2).
            first = values[..., :1]
            dev = values - first
            dev_mean = dev.sum(axis=2) / n
            mean = first[..., 0] + dev_mean
            m2 = ((dev - dev_mean[..., None]) ** 2).sum(axis=2)
        else:
            mean = np.zeros(values.shape[:2])
            m2 = np.zeros(values.shape[:2])
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        if total > 0:
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def std(self, ddof: int = 1) -> np.ndarray:
        """(2, C) standard deviation of the valid pixels (0 when there are at most ``ddof`` of them)."""
        if self.m2 is None:
            raise ValueError("FineStdAccumulator.std read before any update()")
        return np.sqrt(self.m2 / max(self.count - ddof, 1.0))


def tolerances_from_std(std: np.ndarray, config: EstarfmConfig) -> np.ndarray:
    """(2, C) tolerances 2 * std / m (eq. 1), pair-major (t1, t3)."""
    return 2.0 * np.asarray(std, dtype=np.float64) / float(config.n_classes)


def scene_tolerances(source: SceneSource, config: EstarfmConfig) -> np.ndarray:
    """(2, C) global tolerances of a scene from one streaming pass over its row blocks."""
    acc = FineStdAccumulator()
    for block in iter_source_blocks(source):
        acc.update(block.pairs[0].fine, block.pairs[1].fine, block.valid())
    return tolerances_from_std(acc.std(config.tol_ddof), config)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def estarfm(
    coarse_t1: np.ndarray,
    fine_t1: np.ndarray,
    coarse_t3: np.ndarray,
    fine_t3: np.ndarray,
    coarse_t2: np.ndarray,
    *,
    preset: str | None = None,
    config: EstarfmConfig | None = None,
    mask: np.ndarray | None = None,
    return_diagnostics: bool = False,
    **options: Any,
) -> np.ndarray | tuple[np.ndarray, EstarfmDiagnostics]:
    """ESTARFM prediction of the fine image at t2 from two reference pairs, in memory.

    Args:
        coarse_t1, fine_t1: (C, H, W) pair 1, float reflectance on the fine grid; NaN = invalid.
        coarse_t3, fine_t3: (C, H, W) pair 2.
        coarse_t2: (C, H, W) coarse image at the target date (may lie outside [t1, t3]).
        preset: "idl" (default), "idl_legacy" or "paper" (section 4); not with ``config``.
        config: an :class:`EstarfmConfig` to start from; ``options`` override its fields.
        mask: optional (H, W) bool, True = valid, combined with the NaN test.
        return_diagnostics: also return an :class:`EstarfmDiagnostics`.
        **options: :class:`EstarfmConfig` fields by name (see :data:`OPTION_HELP`).

    Returns:
        (C, H, W) predicted fine reflectance at t2, float32 (float64 if any input is float64); NaN at
        invalid pixels. With ``return_diagnostics``: ``(prediction, diagnostics)``.
    """
    cfg = make_config(config, preset, **options)
    images = _check_inputs(
        {"coarse_t1": coarse_t1, "fine_t1": fine_t1, "coarse_t3": coarse_t3, "fine_t3": fine_t3,
         "coarse_t2": coarse_t2}
    )  # fmt: skip
    check_reflectance(
        "ESTARFM",
        coarse_t1=coarse_t1,
        fine_t1=fine_t1,
        coarse_t3=coarse_t3,
        fine_t3=fine_t3,
        coarse_t2=coarse_t2,
    )
    dtype = _result_dtype(images)
    n_bands, height, width = coarse_t2.shape
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (height, width):
            raise ValueError(
                f"mask must be a bool (H, W) = {(height, width)} array, got {mask.dtype} {mask.shape}"
            )
        # NaN is the one invalid marker downstream: mark masked pixels in a copy of coarse_t2.
        coarse_t2 = np.where(mask[None], coarse_t2, np.nan).astype(coarse_t2.dtype, copy=False)
    source = ArraySource([(coarse_t1, fine_t1), (coarse_t3, fine_t3)], coarse_t2)

    prediction = np.empty((n_bands, height, width), dtype=dtype)
    diag = _empty_diagnostics(n_bands, height, width) if return_diagnostics else None
    if cfg.idl_blocks is not None:
        for top in range(0, height, cfg.idl_blocks):
            block = source.block(top, min(height, top + cfg.idl_blocks))
            out = _predict_idl_row(block, cfg, return_diagnostics)
            _store(prediction, diag, out, top)
    else:
        tolerances = scene_tolerances(source, cfg)
        halo = halo_rows(cfg)
        rows = cfg.block_rows or _auto_block_rows(n_bands, width, halo)
        for r0 in range(0, height, rows):
            r1 = min(height, r0 + rows)
            a, b = max(0, r0 - halo), min(height, r1 + halo)
            block = source.block(a, b)
            out = _block_call(block, tolerances, r0 - a, b - r1, cfg, return_diagnostics)
            _store(prediction, diag, out, r0)
    if diag is not None:
        return prediction, diag
    return prediction


def estarfm_block(
    coarse_t1: np.ndarray,
    fine_t1: np.ndarray,
    coarse_t3: np.ndarray,
    fine_t3: np.ndarray,
    coarse_t2: np.ndarray,
    *,
    tolerances: np.ndarray,
    halo_top: int,
    halo_bottom: int,
    config: EstarfmConfig,
    row_offset: int = 0,
    return_diagnostics: bool = False,
) -> np.ndarray | tuple[np.ndarray, EstarfmDiagnostics]:
    """Predict the rows of a full-width row block that lie between its halos (for streaming).

    The inputs are (C, n, W) row slices of the scene whose first ``halo_top`` and last ``halo_bottom``
    rows are context only. Give the full halo (:func:`halo_rows`) except where the scene ends: missing
    rows count as outside the image, exactly as at its border. With the global ``tolerances`` the
    result equals those rows of the untiled prediction bit for bit.

    Args:
        tolerances: (2, C) global similarity tolerances (pair-major: t1, t3), reflectance
            (:func:`scene_tolerances`, or :class:`FineStdAccumulator` + :func:`tolerances_from_std`).
        halo_top, halo_bottom: context rows at the top and bottom of the inputs.
        config: the resolved :class:`EstarfmConfig`.
        row_offset: scene row of the block's first row (aligns coarse cells; ``v_scope="coarse_cell"``).
        return_diagnostics: also return the :class:`EstarfmDiagnostics` of the predicted rows.

    Returns:
        (C, n - halo_top - halo_bottom, W) prediction in the inputs' float type (float64 if any is),
        NaN at invalid pixels [and the diagnostics].
    """
    images = _check_inputs(
        {"coarse_t1": coarse_t1, "fine_t1": fine_t1, "coarse_t3": coarse_t3, "fine_t3": fine_t3,
         "coarse_t2": coarse_t2}
    )  # fmt: skip
    dtype = _result_dtype(images)
    n_bands, n_rows, _ = coarse_t2.shape
    halo = max(halo_rows(config), config.half_window)
    if not (
        _is_int(halo_top) and _is_int(halo_bottom) and 0 <= halo_top <= halo and 0 <= halo_bottom <= halo
    ):
        raise ValueError(
            f"halo_top and halo_bottom must be integers in [0, {halo}], got {halo_top, halo_bottom}"
        )
    if n_rows - halo_top - halo_bottom < 1:
        raise ValueError(f"a block of {n_rows} rows has no rows left after halos {halo_top, halo_bottom}")
    tol = np.asarray(tolerances, dtype=np.float64)
    if tol.shape != (2, n_bands):
        raise ValueError(f"tolerances must have shape (2, C) = {(2, n_bands)}, got {tol.shape}")
    if not np.all(tol >= 0):
        raise ValueError(f"tolerances must be >= 0 reflectance, got {tol.tolist()}")
    pred, n_sim, v, t1, fb = _run_block(
        images, tol, halo_top, n_rows - halo_top - halo_bottom, config, row_offset, dtype
    )
    if return_diagnostics:
        return pred, EstarfmDiagnostics(n_similar=n_sim, V=v, T1=t1, fallback=fb)
    return pred


def prepare(
    source: SceneSource,
    *,
    preset: str | None = None,
    config: EstarfmConfig | None = None,
    **options: Any,
) -> RowBlocks:
    """ESTARFM prepared on a scene: global tolerances from one streaming pass, then row blocks.

    Args:
        source: the scene; pair 0 is (coarse_t1, fine_t1), pair 1 (coarse_t3, fine_t3).
        preset, config, **options: as for :func:`estarfm`.

    Returns:
        A :class:`~stfusion.blocks.RowBlocks` (halo :func:`halo_rows`) whose blocks are float32
        predictions equal to the rows of :func:`estarfm` on the same arrays.
    """
    cfg = make_config(config, preset, **options)
    if source.n_pairs != 2:
        raise ValueError(
            f"ESTARFM needs exactly two reference pairs (one before and one after the target date, "
            f"ideally); the scene has {source.n_pairs}"
        )
    if cfg.idl_blocks is not None:

        def predict_idl(block: Block, halo_top: int, halo_bottom: int) -> np.ndarray:
            out = _predict_idl_row(block, cfg, False)
            return np.asarray(out[0], dtype=np.float32)

        return RowBlocks(predict_idl, halo=0, block_rows=cfg.idl_blocks)

    tolerances = scene_tolerances(source, cfg)
    halo = halo_rows(cfg)

    def predict_block(block: Block, halo_top: int, halo_bottom: int) -> np.ndarray:
        out = _block_call(block, tolerances, halo_top, halo_bottom, cfg, False)
        return np.asarray(out[0], dtype=np.float32)

    rows = cfg.block_rows or _auto_block_rows(source.bands, source.width, halo)
    return RowBlocks(predict_block, halo=halo, block_rows=rows)


# --------------------------------------------------------------------------------------------
# Block helpers
# --------------------------------------------------------------------------------------------

_BlockOut = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]


def _block_call(
    block: Block, tolerances: np.ndarray, halo_top: int, halo_bottom: int, cfg: EstarfmConfig, diag: bool
) -> _BlockOut:
    (p1, p3) = block.pairs
    out = estarfm_block(
        p1.coarse, p1.fine, p3.coarse, p3.fine, block.coarse_t2,
        tolerances=tolerances, halo_top=halo_top, halo_bottom=halo_bottom, config=cfg,
        row_offset=block.top, return_diagnostics=diag,
    )  # fmt: skip
    if isinstance(out, tuple):
        d = out[1]
        return out[0], d.n_similar, d.V, d.T1, d.fallback
    return out, None, None, None, None


def _predict_idl_row(block: Block, cfg: EstarfmConfig, diag: bool) -> _BlockOut:
    """IDL emulation (section 6): each idl_blocks x idl_blocks tile alone, its own std, no halo."""
    side = cfg.idl_blocks
    assert side is not None
    width = block.coarse_t2.shape[2]
    parts: list[_BlockOut] = []
    for c0 in range(0, width, side):
        cols = slice(c0, min(width, c0 + side))
        tile = ArraySource(
            [(p.coarse[:, :, cols], p.fine[:, :, cols]) for p in block.pairs], block.coarse_t2[:, :, cols]
        ).block(0, block.rows)
        tol = tolerances_from_std(_tile_std(tile, cfg.tol_ddof), cfg)
        parts.append(_block_call(tile, tol, 0, 0, cfg, diag))

    def join(i: int) -> np.ndarray | None:
        arrays = [p[i] for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays, axis=-1)  # type: ignore[arg-type]

    pred = join(0)
    assert pred is not None
    return pred, join(1), join(2), join(3), join(4)


def _tile_std(tile: Block, ddof: int) -> np.ndarray:
    acc = FineStdAccumulator()
    acc.update(tile.pairs[0].fine, tile.pairs[1].fine, tile.valid())
    return acc.std(ddof)


def _empty_diagnostics(n_bands: int, height: int, width: int) -> EstarfmDiagnostics:
    return EstarfmDiagnostics(
        n_similar=np.zeros((height, width), np.int32),
        V=np.full((n_bands, height, width), np.nan),
        T1=np.full((n_bands, height, width), np.nan),
        fallback=np.zeros((height, width), bool),
    )


def _store(prediction: np.ndarray, diag: EstarfmDiagnostics | None, out: _BlockOut, row: int) -> None:
    rows = slice(row, row + out[0].shape[1])
    prediction[:, rows] = out[0]
    if diag is not None:
        diag.n_similar[rows] = out[1]
        diag.V[:, rows] = out[2]
        diag.T1[:, rows] = out[3]
        diag.fallback[rows] = out[4]


def _check_inputs(images: dict[str, np.ndarray]) -> list[np.ndarray]:
    shape = images["coarse_t2"].shape if isinstance(images["coarse_t2"], np.ndarray) else None
    for name, image in images.items():
        if not isinstance(image, np.ndarray) or image.ndim != 3:
            raise ValueError(f"{name} must be a (C, H, W) array, got {getattr(image, 'shape', type(image))}")
        if image.shape != shape:
            raise ValueError(f"ESTARFM inputs must share one (C, H, W) shape: {name} {image.shape}, "
                             f"coarse_t2 {shape}")  # fmt: skip
        if image.dtype.kind != "f":
            raise ValueError(
                f"{name} has dtype {image.dtype}; ESTARFM takes float reflectance (0..1): convert stored "
                "integers with stfusion.transforms.to_reflectance"
            )
    return list(images.values())


def _result_dtype(images: list[np.ndarray]) -> np.dtype:
    return np.dtype(np.float64 if any(i.dtype == np.float64 for i in images) else np.float32)


def _auto_block_rows(n_bands: int, width: int, halo: int) -> int:
    # ~(18 C + 3) float64 planes per block row: float64 copies of the 5 inputs, keys (2C), per-pixel
    # values (6C + 1), box-sum planes (3C + 1), window deltas (2C) and temporaries.
    per_row = (18 * n_bands + 3) * 8 * width
    return max(64, _BLOCK_BUDGET_BYTES // max(per_row, 1) - 2 * halo)


# --------------------------------------------------------------------------------------------
# Per-block images and the kernels
# --------------------------------------------------------------------------------------------


def _correlation(f1: np.ndarray, c1: np.ndarray, f3: np.ndarray, c3: np.ndarray, r_nan: float) -> np.ndarray:
    """(n, W) float64 spectral correlation R (eqs. 3-4); ``r_nan`` where undefined, at most 1.

    Sums run plane by plane, so each pixel's value does not depend on the block it is computed in.
    """
    fine = [np.asarray(x, dtype=np.float64) for x in (*f1, *f3)]
    coarse = [np.asarray(x, dtype=np.float64) for x in (*c1, *c3)]
    with np.errstate(invalid="ignore", divide="ignore"):
        if len(f1) == 1:
            term1 = np.abs(fine[0] - coarse[0]) / np.abs(fine[0] + coarse[0])
            term3 = np.abs(fine[1] - coarse[1]) / np.abs(fine[1] + coarse[1])
            r = 1.0 - 0.5 * (term1 + term3)
            r = np.where(np.isfinite(r), r, r_nan)
        else:
            n = float(len(fine))
            mean_f = functools.reduce(np.add, fine) / n
            mean_c = functools.reduce(np.add, coarse) / n
            num = np.zeros_like(mean_f)
            ss_f = np.zeros_like(mean_f)
            ss_c = np.zeros_like(mean_f)
            for f, c in zip(fine, coarse, strict=True):
                df, dc = f - mean_f, c - mean_c
                num += df * dc
                ss_f += df * df
                ss_c += dc * dc
            den = np.sqrt(ss_f * ss_c)
            r = np.where(den > 0, num / np.where(den > 0, den, 1.0), r_nan)
    # Rounding can push a perfect correlation past 1; 1 - R must stay >= 0 (weights >= 0).
    return np.minimum(r, 1.0)


@functools.lru_cache(maxsize=16)
def _r2_thresholds(alpha: float, max_samples: int) -> np.ndarray:
    """r^2 acceptance threshold by sample count N (section 3.5): p <= alpha <=> r^2 >= F_c / (F_c + N - 2).

    F_c is the (1 - alpha) quantile of F(1, N - 2); entries N < 3 are +inf (never accepted).
    """
    thr = np.full(max_samples + 1, np.inf)
    if max_samples >= 3:
        df = np.arange(1, max_samples - 1, dtype=np.float64)
        f_crit = stats.f.isf(alpha, 1.0, df)
        thr[3:] = f_crit / (f_crit + df)
    thr.setflags(write=False)
    return thr


def _run_block(
    images: list[np.ndarray],
    tol: np.ndarray,
    top: int,
    n_out: int,
    cfg: EstarfmConfig,
    row_offset: int,
    dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    c1, f1, c3, f3, c2 = (np.asarray(x, dtype=np.float64) for x in images)
    n_bands, n_rows, width = c2.shape
    h = cfg.half_window
    valid = np.ones((n_rows, width), dtype=bool)
    for image in (c1, f1, c3, f3, c2):
        valid &= np.isfinite(image).all(axis=0)

    # Similarity keys F1 then F3 bands, planar (2C, n, W) so a window row of one key is contiguous
    # (the similarity mask of a row vectorises); NaN where invalid fails every comparison.
    keys = np.concatenate([f1, f3])
    keys[:, ~valid] = np.nan
    # Values read for similar pixels only, pixel-major (n, W, 1 + 6C) so one pixel's values are
    # adjacent: R, then per band C1, C3, C2 - C1, C2 - C3, F1, F3 (float64: the weights depend on 1 - R).
    aux = np.empty((n_rows, width, 1 + 6 * n_bands), dtype=np.float64)
    aux[:, :, 0] = _correlation(f1, c1, f3, c3, cfg.r_nan)
    with np.errstate(invalid="ignore"):
        for b in range(n_bands):
            base = 1 + 6 * b
            for j, plane in enumerate((c1[b], c3[b], c2[b] - c1[b], c2[b] - c3[b], f1[b], f3[b])):
                aux[:, :, base + j] = plane
    # Window means of C1, C3, C2 over valid pixels (eq. 7): planes zeroed where invalid + a count.
    planes = np.zeros((3 * n_bands + 1, n_rows, width), dtype=np.float64)
    for q, image in enumerate((c1, c3, c2)):
        planes[q * n_bands : (q + 1) * n_bands][:, valid] = image[:, valid]
    planes[3 * n_bands] = valid
    delta = np.empty((n_out, width, 2 * n_bands), dtype=np.float64)
    _window_deltas(planes, h, top, n_out, delta)

    key_tol = tol.reshape(-1).astype(np.float64)
    # "<=" as "<" against the next double up: identical for every double difference.
    test_tol = key_tol if cfg.similar_strict else np.nextafter(key_tol, np.inf)
    offsets = np.arange(-h, h + 1, dtype=np.float64)
    dist_factor = 1.0 + np.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2) / h
    lo_hi = cfg.v_slope_range if cfg.v_slope_range is not None else (-np.inf, np.inf)
    gate = {"none": 0, "change": 1, "std": 2}[cfg.v_gate]
    params = np.array(
        [cfg.weight_eps, (1.0 - _R_ONE_ATOL) if cfg.r_one_rule else np.inf, cfg.gate_threshold,
         lo_hi[0], lo_hi[1], cfg.valid_range[0], cfg.valid_range[1], cfg.temporal_eps],
        dtype=np.float64,
    )  # fmt: skip
    flags = np.array(
        [h, cfg.min_similar, cfg.max_similar or 0, gate, int(cfg.range_fix), int(cfg.fallback == "centre"),
         top, row_offset, cfg.coarse_factor or 0],
        dtype=np.int64,
    )  # fmt: skip
    pred = np.empty((n_bands, n_out, width), dtype=np.float64)
    v_out = np.empty((n_bands, n_out, width), dtype=np.float64)
    t1_out = np.empty((n_bands, n_out, width), dtype=np.float64)
    n_sim = np.empty((n_out, width), dtype=np.int32)
    fb = np.empty((n_out, width), dtype=np.bool_)
    outputs = (pred, v_out, t1_out, n_sim, fb)
    if cfg.v_scope == "coarse_cell":
        s = int(cfg.coarse_factor or 1)
        thr = _r2_thresholds(float(cfg.v_alpha), 2 * s * s)
        _cell_kernel(keys, aux, delta, test_tol, dist_factor, thr, params, flags, *outputs)
    else:
        side = 2 * h + 1
        thr = _r2_thresholds(float(cfg.v_alpha), 2 * side * side)
        inv_tol = np.where(key_tol > 0, 1.0 / np.where(key_tol > 0, key_tol, 1.0), 0.0)
        _window_kernel(keys, aux, delta, test_tol, inv_tol, dist_factor, thr, params, flags, *outputs)
    return pred.astype(dtype, copy=False), n_sim, v_out, t1_out, fb


# Kernels: compiled on first use and cached on disk; float64 throughout (one compiled signature).
_jit = numba.njit(cache=True)
_pjit = numba.njit(cache=True, parallel=True)
# Hot helpers are inlined in numba's IR: as separate LLVM functions they cost ~2.5x in calls.
_inline = numba.njit(cache=True, inline="always")


@_pjit
def _window_deltas(planes: np.ndarray, h: int, top: int, n_out: int, delta: np.ndarray) -> None:
    """delta (n_out, W, 2C): window mean of C2 minus that of C1 (then C3), over valid pixels (eq. 7).

    ``planes`` (3C + 1, n, W): C1, C3, C2 zeroed where invalid, then the validity count. Direct sums
    (column sums over the clipped rows, then over the clipped columns) in an order fixed relative to
    the pixel, so blocks reproduce the untiled values exactly.
    """
    n_planes, n_rows, width = planes.shape
    n_bands = (n_planes - 1) // 3
    for i in numba.prange(n_out):
        r = top + i
        r_lo, r_hi = max(0, r - h), min(n_rows - 1, r + h)
        col = np.zeros((n_planes, width))
        for rr in range(r_lo, r_hi + 1):
            for q in range(n_planes):
                for c in range(width):
                    col[q, c] += planes[q, rr, c]
        sums = np.empty(n_planes)
        for x in range(width):
            c_lo, c_hi = max(0, x - h), min(width - 1, x + h)
            for q in range(n_planes):
                total = 0.0
                for c in range(c_lo, c_hi + 1):
                    total += col[q, c]
                sums[q] = total
            count = sums[n_planes - 1]
            for b in range(n_bands):
                if count > 0:
                    mean2 = sums[2 * n_bands + b] / count
                    delta[i, x, b] = mean2 - sums[b] / count
                    delta[i, x, n_bands + b] = mean2 - sums[n_bands + b] / count
                else:
                    delta[i, x, b] = np.nan
                    delta[i, x, n_bands + b] = np.nan


@_inline
def _row_mask(
    keys: np.ndarray,
    rr: int,
    c_lo: int,
    c_hi: int,
    zc: np.ndarray,
    test_tol: np.ndarray,
    mask: np.ndarray,
    idx: np.ndarray,
) -> int:
    """Similar pixels of row rr, columns c_lo..c_hi (eq. 2): their column offsets in idx[:count]."""
    n = c_hi - c_lo + 1
    for t in range(n):
        mask[t] = True
    # One key at a time over the contiguous row: compare-and-combine loops that vectorise.
    for j in range(keys.shape[0]):
        zj = zc[j]
        tj = test_tol[j]
        for t in range(n):
            mask[t] = mask[t] & (abs(keys[j, rr, c_lo + t] - zj) < tj)
    # Branch-free compaction: most pixels are not similar, a branch per pixel would mispredict.
    count = 0
    for t in range(n):
        idx[count] = t
        count += mask[t]
    return count


@_inline
def _add_similar(
    aux: np.ndarray,
    rr: int,
    cc: int,
    dfac: float,
    eps_w: float,
    perfect_r: float,
    cx: np.ndarray,
    fy: np.ndarray,
    acc: np.ndarray,
    tot: np.ndarray,
) -> None:
    """Add similar pixel (rr, cc) to the window sums.

    acc (10, C): regression sums of the samples shifted by the centre's C1 (x) and F1 (y) values
    (sum C1, sum C3, sum y, sum x^2, sum y^2, sum xy), the omega-weighted C2 - C1 and C2 - C3, and the
    same changes unweighted over "perfect" pixels (R = 1 rule). tot (3,): count, sum omega, perfect count.
    """
    n_bands = acc.shape[1]
    r = aux[rr, cc, 0]
    den = (1.0 - r) * dfac + eps_w
    perfect = r >= perfect_r or den <= 0.0
    w = 0.0
    if perfect:
        tot[2] += 1.0
    else:
        w = 1.0 / den
        tot[1] += w
    tot[0] += 1.0
    for b in range(n_bands):
        base = 1 + 6 * b
        x1 = aux[rr, cc, base] - cx[b]
        x3 = aux[rr, cc, base + 1] - cx[b]
        y1 = aux[rr, cc, base + 4] - fy[b]
        y3 = aux[rr, cc, base + 5] - fy[b]
        acc[0, b] += x1
        acc[1, b] += x3
        acc[2, b] += y1 + y3
        acc[3, b] += x1 * x1 + x3 * x3
        acc[4, b] += y1 * y1 + y3 * y3
        acc[5, b] += x1 * y1 + x3 * y3
        if perfect:
            acc[8, b] += aux[rr, cc, base + 2]
            acc[9, b] += aux[rr, cc, base + 3]
        else:
            acc[6, b] += w * aux[rr, cc, base + 2]
            acc[7, b] += w * aux[rr, cc, base + 3]


@_jit
def _fit_v(
    n_pix: float,
    s1: float,
    s3: float,
    sy: float,
    sxx_raw: float,
    syy_raw: float,
    sxy_raw: float,
    gate: int,
    gate_value: float,
    slope_lo: float,
    slope_hi: float,
    thr: np.ndarray,
) -> float:
    """V of one band from the sums of 2 n_pix shifted samples (section 3.5); 1 when gated or rejected."""
    n = 2.0 * n_pix
    sx = s1 + s3
    sxx = sxx_raw - sx * sx / n
    syy = syy_raw - sy * sy / n
    sxy = sxy_raw - sx * sy / n
    if gate == 1 and not abs(s1 - s3) / n_pix >= gate_value:
        return 1.0
    if gate == 2 and not math.sqrt(max(sxx, 0.0) / (n - 1.0)) >= gate_value:
        return 1.0
    # Rounding leaves a tiny positive sxx from identical samples: treat it as zero variance.
    if n < 3.0 or sxx <= 1e-13 * sxx_raw or sxx <= 0.0:
        return 1.0
    a = sxy / sxx
    if not (slope_lo < a <= slope_hi):
        return 1.0
    r2 = sxy * sxy / (sxx * syy) if syy > 0.0 else 0.0
    if r2 >= thr[int(n)]:
        return a
    return 1.0


@_jit
def _temporal(delta: np.ndarray, i: int, x: int, b: int, n_bands: int, eps_t: float) -> tuple[float, float]:
    """(T1, T3) of band b (eq. 8)."""
    i1 = 1.0 / (abs(delta[i, x, b]) + eps_t)
    i3 = 1.0 / (abs(delta[i, x, n_bands + b]) + eps_t)
    return i1 / (i1 + i3), i3 / (i1 + i3)


@_jit
def _repair_sums(
    keys: np.ndarray,
    aux: np.ndarray,
    r: int,
    x: int,
    h: int,
    zc: np.ndarray,
    test_tol: np.ndarray,
    dist_factor: np.ndarray,
    eps_w: float,
    perfect_r: float,
    rows_buf: np.ndarray,
    cols_buf: np.ndarray,
    n_buf: int,
    out: np.ndarray,
) -> None:
    """out (2, C): sum over S of W(p) F1(p) and W(p) F3(p) (eq. 10), a second pass over S.

    S is the ``n_buf`` buffered pixels (max_similar) or, when ``n_buf`` < 0, the window's similar pixels.
    """
    n_rows, width = keys.shape[1], keys.shape[2]
    n_bands = keys.shape[0] // 2
    side = 2 * h + 1
    if n_buf >= 0:
        count = n_buf
    else:
        mask = np.empty(side, dtype=np.bool_)
        idx = np.empty(side, dtype=np.int64)
        c_lo = max(0, x - h)
        count = 0
        for rr in range(max(0, r - h), min(n_rows - 1, r + h) + 1):
            n_row = _row_mask(keys, rr, c_lo, min(width - 1, x + h), zc, test_tol, mask, idx)
            for q in range(n_row):
                rows_buf[count] = rr
                cols_buf[count] = c_lo + idx[q]
                count += 1
    sw = 0.0
    n_perfect = 0.0
    ws = np.zeros((2, n_bands))
    pf = np.zeros((2, n_bands))
    for t in range(count):
        rr, cc = rows_buf[t], cols_buf[t]
        rv = aux[rr, cc, 0]
        den = (1.0 - rv) * dist_factor[rr - r + h, cc - x + h] + eps_w
        if rv >= perfect_r or den <= 0.0:
            n_perfect += 1.0
            for b in range(n_bands):
                pf[0, b] += aux[rr, cc, 5 + 6 * b]
                pf[1, b] += aux[rr, cc, 6 + 6 * b]
        else:
            w = 1.0 / den
            sw += w
            for b in range(n_bands):
                ws[0, b] += w * aux[rr, cc, 5 + 6 * b]
                ws[1, b] += w * aux[rr, cc, 6 + 6 * b]
    for k in range(2):
        for b in range(n_bands):
            out[k, b] = pf[k, b] / n_perfect if n_perfect > 0 else ws[k, b] / sw


@_jit
def _finish_pixel(
    keys: np.ndarray,
    aux: np.ndarray,
    delta: np.ndarray,
    i: int,
    r: int,
    x: int,
    n_pix: int,
    a1: np.ndarray,
    a3: np.ndarray,
    v: np.ndarray,
    params: np.ndarray,
    flags: np.ndarray,
    zc: np.ndarray,
    test_tol: np.ndarray,
    dist_factor: np.ndarray,
    rows_buf: np.ndarray,
    cols_buf: np.ndarray,
    n_buf: int,
    pred: np.ndarray,
    v_out: np.ndarray,
    t1_out: np.ndarray,
    n_sim: np.ndarray,
    fb: np.ndarray,
) -> None:
    """Eqs. 9-12 for one pixel: a1, a3 (C,) are the weighted coarse changes, v (C,) the V's applied."""
    n_bands = v.shape[0]
    eps_w, perfect_r = params[0], params[1]
    lo, hi, eps_t = params[5], params[6], params[7]
    h, min_similar, range_fix, centre_fallback = flags[0], flags[1], flags[4], flags[5]
    fallback = n_pix < min_similar
    n_sim[i, x] = n_pix
    fb[i, x] = fallback
    repaired = False
    fsum = np.empty((2, n_bands))
    for b in range(n_bands):
        t1, t3 = _temporal(delta, i, x, b, n_bands, eps_t)
        t1_out[b, i, x] = t1
        f1x = zc[b]
        f3x = zc[n_bands + b]
        if fallback:
            v_out[b, i, x] = 1.0
            if centre_fallback:
                pred[b, i, x] = t1 * f1x + t3 * f3x
            else:
                pred[b, i, x] = t1 * (f1x + delta[i, x, b]) + t3 * (f3x + delta[i, x, n_bands + b])
            continue
        v_out[b, i, x] = v[b]
        value = t1 * (f1x + v[b] * a1[b]) + t3 * (f3x + v[b] * a3[b])
        if range_fix and (value <= lo or value >= hi):
            if not repaired:
                _repair_sums(
                    keys, aux, r, x, h, zc, test_tol, dist_factor, eps_w, perfect_r,
                    rows_buf, cols_buf, n_buf, fsum,
                )  # fmt: skip
                repaired = True
            value = t1 * fsum[0, b] + t3 * fsum[1, b]
        pred[b, i, x] = value


@_jit
def _start_pixel(
    keys: np.ndarray, aux: np.ndarray, r: int, x: int, zc: np.ndarray, cx: np.ndarray, fy: np.ndarray
) -> None:
    """Centre values of target (r, x): keys zc, regression shifts cx = C1(x), fy = F1(x)."""
    n_bands = cx.shape[0]
    for j in range(keys.shape[0]):
        zc[j] = keys[j, r, x]
    for b in range(n_bands):
        cx[b] = aux[r, x, 1 + 6 * b]
        fy[b] = aux[r, x, 5 + 6 * b]


@_jit
def _mark_invalid(
    i: int, x: int, pred: np.ndarray, v_out: np.ndarray, t1_out: np.ndarray, n_sim: np.ndarray, fb: np.ndarray
) -> None:
    for b in range(pred.shape[0]):
        pred[b, i, x] = np.nan
        v_out[b, i, x] = np.nan
        t1_out[b, i, x] = np.nan
    n_sim[i, x] = 0
    fb[i, x] = False


@_pjit
def _window_kernel(
    keys: np.ndarray,
    aux: np.ndarray,
    delta: np.ndarray,
    test_tol: np.ndarray,
    inv_tol: np.ndarray,
    dist_factor: np.ndarray,
    thr: np.ndarray,
    params: np.ndarray,
    flags: np.ndarray,
    pred: np.ndarray,
    v_out: np.ndarray,
    t1_out: np.ndarray,
    n_sim: np.ndarray,
    fb: np.ndarray,
) -> None:
    """ESTARFM with one V per band from the window's similar pixels (v_scope="window").

    keys (2C, n, W): F1 then F3 bands, NaN where invalid; aux (n, W, 1 + 6C); delta (n_out, W, 2C);
    outputs (C, n_out, W) / (n_out, W) for block rows top .. top + n_out - 1 (see ``_run_block``).
    """
    n_keys, n_rows, width = keys.shape
    n_bands = n_keys // 2
    n_out = pred.shape[1]
    eps_w, perfect_r, gate_value, slope_lo, slope_hi = params[0], params[1], params[2], params[3], params[4]
    h, cap, gate, top = flags[0], flags[2], flags[3], flags[6]
    side = 2 * h + 1
    for i in numba.prange(n_out):
        r = top + i
        acc = np.empty((10, n_bands))
        tot = np.empty(3)
        zc = np.empty(n_keys)
        cx = np.empty(n_bands)
        fy = np.empty(n_bands)
        a1 = np.empty(n_bands)
        a3 = np.empty(n_bands)
        v = np.empty(n_bands)
        mask = np.empty(side, dtype=np.bool_)
        idx = np.empty(side, dtype=np.int64)
        keep = np.empty(max(cap, 1))
        rows_buf = np.empty(side * side, dtype=np.int64)
        cols_buf = np.empty(side * side, dtype=np.int64)
        r_lo, r_hi = max(0, r - h), min(n_rows - 1, r + h)
        for x in range(width):
            if np.isnan(keys[0, r, x]):
                _mark_invalid(i, x, pred, v_out, t1_out, n_sim, fb)
                continue
            _start_pixel(keys, aux, r, x, zc, cx, fy)
            acc[:] = 0.0
            tot[:] = 0.0
            c_lo, c_hi = max(0, x - h), min(width - 1, x + h)
            n_kept = 0
            for rr in range(r_lo, r_hi + 1):
                dy = rr - r + h
                n_row = _row_mask(keys, rr, c_lo, c_hi, zc, test_tol, mask, idx)
                for q in range(n_row):
                    cc = c_lo + idx[q]
                    if cap == 0:
                        _add_similar(
                            aux, rr, cc, dist_factor[dy, cc - x + h], eps_w, perfect_r, cx, fy, acc, tot
                        )
                        continue
                    # ESTARFM_FAST: keep the cap smallest keys; ties keep the earlier (raster) pixel.
                    key = 0.0
                    for j in range(n_keys):
                        key += abs(keys[j, rr, cc] - zc[j]) * inv_tol[j]
                    if n_kept < cap:
                        pos = n_kept
                        n_kept += 1
                    elif key < keep[cap - 1]:
                        pos = cap - 1
                    else:
                        continue
                    while pos > 0 and keep[pos - 1] > key:
                        keep[pos] = keep[pos - 1]
                        rows_buf[pos] = rows_buf[pos - 1]
                        cols_buf[pos] = cols_buf[pos - 1]
                        pos -= 1
                    keep[pos] = key
                    rows_buf[pos] = rr
                    cols_buf[pos] = cc
            for t in range(n_kept):
                rr, cc = rows_buf[t], cols_buf[t]
                _add_similar(
                    aux, rr, cc, dist_factor[rr - r + h, cc - x + h], eps_w, perfect_r, cx, fy, acc, tot
                )
            n_pix = int(tot[0])
            if n_pix >= flags[1]:
                for b in range(n_bands):
                    v[b] = _fit_v(tot[0], acc[0, b], acc[1, b], acc[2, b], acc[3, b], acc[4, b], acc[5, b],
                                  gate, gate_value, slope_lo, slope_hi, thr)  # fmt: skip
                    if tot[2] > 0:
                        a1[b] = acc[8, b] / tot[2]
                        a3[b] = acc[9, b] / tot[2]
                    else:
                        a1[b] = acc[6, b] / tot[1]
                        a3[b] = acc[7, b] / tot[1]
            _finish_pixel(
                keys, aux, delta, i, r, x, n_pix, a1, a3, v, params, flags, zc, test_tol, dist_factor,
                rows_buf, cols_buf, n_kept if cap > 0 else -1, pred, v_out, t1_out, n_sim, fb,
            )  # fmt: skip


@_pjit
def _cell_kernel(
    keys: np.ndarray,
    aux: np.ndarray,
    delta: np.ndarray,
    test_tol: np.ndarray,
    dist_factor: np.ndarray,
    thr: np.ndarray,
    params: np.ndarray,
    flags: np.ndarray,
    pred: np.ndarray,
    v_out: np.ndarray,
    t1_out: np.ndarray,
    n_sim: np.ndarray,
    fb: np.ndarray,
) -> None:
    """ESTARFM with one V per band and coarse cell (v_scope="coarse_cell", paper Fig. 2).

    Cells are s x s blocks aligned with scene pixel (0, 0) (block row 0 is scene row ``row_offset``).
    V of a cell is fitted from all its valid pixels similar to the target, inside the window or not;
    each similar pixel of the window uses its cell's V. Arrays as for :func:`_window_kernel`; the
    reported V is the weight-averaged V of the cells.
    """
    n_keys, n_rows, width = keys.shape
    n_bands = n_keys // 2
    n_out = pred.shape[1]
    eps_w, perfect_r, gate_value, slope_lo, slope_hi = params[0], params[1], params[2], params[3], params[4]
    h, gate, top, row_offset, s = flags[0], flags[3], flags[6], flags[7], flags[8]
    side = 2 * h + 1
    span = side + 2 * s - 2  # widest run of rows (or columns) of the cells touching a window
    max_cells = (span // s + 1) ** 2
    for i in numba.prange(n_out):
        r = top + i
        reg = np.empty((max_cells, 6, n_bands))  # per cell: the 6 regression sums (see _add_similar)
        chg = np.empty((max_cells, 4, n_bands))  # per cell: weighted and perfect C2 - C1, C2 - C3
        cnt = np.empty((max_cells, 3))  # per cell: fit samples, sum omega, perfect count (S pixels)
        tot = np.empty(3)
        zc = np.empty(n_keys)
        cx = np.empty(n_bands)
        fy = np.empty(n_bands)
        a1 = np.empty(n_bands)
        a3 = np.empty(n_bands)
        v = np.empty(n_bands)
        ones = np.ones(n_bands)
        mask = np.empty(span, dtype=np.bool_)
        idx = np.empty(span, dtype=np.int64)
        rows_buf = np.empty(side * side, dtype=np.int64)
        cols_buf = np.empty(side * side, dtype=np.int64)
        r_lo, r_hi = max(0, r - h), min(n_rows - 1, r + h)
        gy0 = (r_lo + row_offset) // s
        gy1 = (r_hi + row_offset) // s
        e_r0 = max(0, gy0 * s - row_offset)
        e_r1 = min(n_rows - 1, (gy1 + 1) * s - 1 - row_offset)
        for x in range(width):
            if np.isnan(keys[0, r, x]):
                _mark_invalid(i, x, pred, v_out, t1_out, n_sim, fb)
                continue
            _start_pixel(keys, aux, r, x, zc, cx, fy)
            c_lo, c_hi = max(0, x - h), min(width - 1, x + h)
            gx0 = c_lo // s
            n_cx = c_hi // s - gx0 + 1
            e_c0 = gx0 * s
            e_c1 = min(width - 1, (c_hi // s + 1) * s - 1)
            n_cells = (gy1 - gy0 + 1) * n_cx
            reg[:n_cells] = 0.0
            chg[:n_cells] = 0.0
            cnt[:n_cells] = 0.0
            tot[:] = 0.0
            for rr in range(e_r0, e_r1 + 1):
                cy = (rr + row_offset) // s - gy0
                in_rows = r_lo <= rr <= r_hi
                n_row = _row_mask(keys, rr, e_c0, e_c1, zc, test_tol, mask, idx)
                for q in range(n_row):
                    cc = e_c0 + idx[q]
                    ci = cy * n_cx + cc // s - gx0
                    # Fit sums of the cell: every similar pixel of the cell.
                    cnt[ci, 0] += 1.0
                    for b in range(n_bands):
                        base = 1 + 6 * b
                        x1 = aux[rr, cc, base] - cx[b]
                        x3 = aux[rr, cc, base + 1] - cx[b]
                        y1 = aux[rr, cc, base + 4] - fy[b]
                        y3 = aux[rr, cc, base + 5] - fy[b]
                        reg[ci, 0, b] += x1
                        reg[ci, 1, b] += x3
                        reg[ci, 2, b] += y1 + y3
                        reg[ci, 3, b] += x1 * x1 + x3 * x3
                        reg[ci, 4, b] += y1 * y1 + y3 * y3
                        reg[ci, 5, b] += x1 * y1 + x3 * y3
                    if not (in_rows and c_lo <= cc <= c_hi):
                        continue
                    # A member of S(x): its weight goes to its cell's change sums.
                    rv = aux[rr, cc, 0]
                    den = (1.0 - rv) * dist_factor[rr - r + h, cc - x + h] + eps_w
                    tot[0] += 1.0
                    if rv >= perfect_r or den <= 0.0:
                        tot[2] += 1.0
                        cnt[ci, 2] += 1.0
                        for b in range(n_bands):
                            chg[ci, 2, b] += aux[rr, cc, 3 + 6 * b]
                            chg[ci, 3, b] += aux[rr, cc, 4 + 6 * b]
                    else:
                        w = 1.0 / den
                        tot[1] += w
                        cnt[ci, 1] += w
                        for b in range(n_bands):
                            chg[ci, 0, b] += w * aux[rr, cc, 3 + 6 * b]
                            chg[ci, 1, b] += w * aux[rr, cc, 4 + 6 * b]
            n_pix = int(tot[0])
            if n_pix < flags[1]:
                _finish_pixel(
                    keys, aux, delta, i, r, x, n_pix, a1, a3, ones, params, flags, zc, test_tol, dist_factor,
                    rows_buf, cols_buf, -1, pred, v_out, t1_out, n_sim, fb,
                )  # fmt: skip
                continue
            perfect = tot[2] > 0
            norm = tot[2] if perfect else tot[1]
            k = 2 if perfect else 0
            a1[:] = 0.0
            a3[:] = 0.0
            v[:] = 0.0
            for ci in range(n_cells):
                share = cnt[ci, 2] if perfect else cnt[ci, 1]
                if share <= 0.0:
                    continue
                for b in range(n_bands):
                    vb = _fit_v(
                        cnt[ci, 0], reg[ci, 0, b], reg[ci, 1, b], reg[ci, 2, b], reg[ci, 3, b], reg[ci, 4, b],
                        reg[ci, 5, b], gate, gate_value, slope_lo, slope_hi, thr,
                    )  # fmt: skip
                    a1[b] += vb * chg[ci, k, b]
                    a3[b] += vb * chg[ci, k + 1, b]
                    v[b] += vb * share
            for b in range(n_bands):
                a1[b] /= norm
                a3[b] /= norm
                v[b] /= norm
            # V is already inside a1, a3: finish with V = 1, then report the weight-averaged V.
            _finish_pixel(
                keys, aux, delta, i, r, x, n_pix, a1, a3, ones, params, flags, zc, test_tol, dist_factor,
                rows_buf, cols_buf, -1, pred, v_out, t1_out, n_sim, fb,
            )  # fmt: skip
            for b in range(n_bands):
                v_out[b, i, x] = v[b]


__all__ = [
    "OPTION_HELP",
    "PRESETS",
    "EstarfmConfig",
    "EstarfmDiagnostics",
    "FineStdAccumulator",
    "estarfm",
    "estarfm_block",
    "halo_rows",
    "make_config",
    "prepare",
    "scene_tolerances",
    "tolerances_from_std",
]

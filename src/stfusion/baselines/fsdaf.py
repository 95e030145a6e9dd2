"""FSDAF: Flexible Spatiotemporal DAta Fusion (Zhu et al. 2016), NumPy/SciPy + numba implementation.

Implements docs/specs/FSDAF.md (section numbers below refer to it). Two presets:

- ``"fsdaf_idl"`` (default): the author's 2019 IDL reference (noise clamp of F1, HI window w,
  residual sign rule and weight clamp, t2 clamp, all-band similarity threshold, weights
  1/((1 + d/w)(1 + S)), out-of-range repair).
- ``"zhu2016"``: the paper (HI window of one coarse pixel, signed residual weights, same-class
  similar pixels, weights 1/(1 + d/w)).

Everything takes float reflectance (0..1) on the fine grid, bands first: ``(C, H, W)``. NaN in any
input, ``valid_mask == False`` or ``class_map <= 0`` marks an invalid pixel: it is excluded from
every statistic and neighbourhood and its output is NaN.

**Entry points.** :func:`prepare` runs FSDAF on a :class:`~stfusion.blocks.SceneSource` (the
package's streaming path): it computes the scene-wide statistics in passes over row blocks, with
memory bounded by a few blocks (``n_jobs`` computed at a time, reduced in row order, so the results
do not depend on the thread count), and returns a :class:`~stfusion.blocks.Prediction` whose blocks
are full-width strips of FSDAF blocks. :func:`fsdaf` is the in-memory function (arrays in, array
out); it is exactly ``predict_scene(prepare(ArraySource(...)))``, so both paths give identical
results.

**Blocks.** The scene is cut into blocks of ``block_size`` x ``block_size`` coarse cells (default
:data:`DEFAULT_BLOCK_SIZE` = 30, the reference's block size). Global quantities (classification,
noise clamp, class changes ΔF, similarity thresholds, t2 clamp bounds) are computed over the whole
scene; each block is read with a margin of ``block_margin_cells(config)`` coarse cells, which makes
the homogeneity index, the residual distribution and the final neighbourhood step exact. The only
block-local step is the thin-plate spline (3.6), fitted on the control points of the block plus
its margin; that is the (small) difference between blocked and global results. A "global" run is
a block size at least as large as the scene in coarse cells (up to :data:`MAX_TPS_POINTS`).

Why 30: accuracy hardly depends on it and speed favours large blocks. Blocked vs global RMSE on
the bundled samples (reflectance) for 8 to 24-cell blocks: lgc-flood (s = 16) 1.4e-5 to 6.5e-6,
cia-crop (s = 9) 4.3e-6 to 1.6e-6, estarfm-site (s = 16) 2.1e-6 to 5.5e-7, against errors vs the
truth of 0.023, 0.039 and 0.014; at 30 cells each of these samples is one block (= global). Speed:
on 2040 x 1720 x 6 at s = 16 the CPU time with 20, 30 and 40-cell blocks was the same within the
run-to-run noise (24 to 29 s): a smaller TPS fit (O(P³), P = (block + 2·margin)² control points,
one factorisation per distinct control-point layout) is offset by more margin pixels read twice.

**Passes.** :func:`prepare` reads the scene in row blocks: (1) valid pixels, band sums; (2) the
k-means sample (``rng.choice`` of pixel positions over the whole scene, the valid ones kept, topped up
by fixed pixel priorities), squared
deviations, first level of the exact noise-clamp quantiles (histograms of float bit patterns);
(2') the quantiles' second level (float64 data may need more); (3) classes present and the clamp's
fill values; (4) over the rows of FSDAF blocks, the cell table for the unmixing, block by block as
the reference builds it (per class only the ``n_pure`` purest cells are kept). Memory is a block of
rows plus O(classes x n_pure) numbers, whatever the scene's height.

**Scale factor.** ``scale_factor=None`` (default) estimates s from the coarse image with
:func:`estimate_scale_factor` (on up to 512 rows around the scene's middle); pass the true ratio
(coarse / fine pixel size) when it is known.

**Speed.** The final neighbourhood step (3.10) is a numba kernel, parallel over target rows, with
the reference's float32 selection keys and tie order (offset distance, then raster order); the TPS
is fitted by a LAPACK LU of a system built by numba (factorisations reused by blocks with the same
control-point layout; the triangular solves are a kernel too, as OpenBLAS's threads would spin after
each call on the core of the concurrent block) and evaluated on the cell lattice by FFT convolution,
per pixel phase (the direct sum costs O(pixels x control points)); homogeneity, temporal prediction,
cell means and residual distribution are numba kernels too. ``n_jobs`` (default: numba's thread
count) sets the threads of the kernels and FFTs. The kernels are compiled on first use and cached on
disk.

A strip runs in two phases: steps 3.4-3.9 of its blocks (:func:`block_change`) in concurrent threads,
one kernel thread each (their NumPy and LAPACK parts are serial), then the final step of each block
(:func:`block_prediction`) on every thread, row-parallel, so that narrow edge blocks do not leave a
core idle; ``workers`` blocks at a time, so memory holds that many blocks' intermediate results. The
final step's candidate loop is vector code over a row of targets: a candidate failing the threshold
gets an infinite key, each target's sorted list is updated by a vector min/max on the (key, offset)
pairs read as float64, and the targets to update are found eight flags at a time; the selection is
the reference's, unchanged. The weights of the selected pixels are then computed tile by tile (a
tile's window fits in the L2 cache) from pixel-major copies of F1 and the total change.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import logging
import math
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any, Literal, overload

import numba
import numpy as np
from numpy.typing import NDArray
from scipy import fft as sp_fft
from scipy import linalg as scipy_linalg
from scipy.optimize import lsq_linear

from stfusion.blocks import (
    ArraySource,
    Block,
    Prediction,
    RowBlocks,
    SceneSource,
    SourceView,
    check_fusion_inputs,
    check_reflectance,
    iter_source_blocks,
    predict_scene,
)
from stfusion.tiling import Window

log = logging.getLogger(__name__)

Array = NDArray[Any]
Preset = Literal["fsdaf_idl", "zhu2016"]
SimilarRule = Literal["threshold", "class"]
FinalWeighting = Literal["idl", "paper"]

PRESETS: tuple[str, ...] = ("fsdaf_idl", "zhu2016")

#: Default block side in coarse cells: the IDL reference's block size. At s = 16 a block plus its
#: margin holds 40 x 40 control points (TPS fit ~0.07 s); see the module docstring for accuracy.
DEFAULT_BLOCK_SIZE = 30
#: Largest number of TPS control points allowed in one block (a dense (P+3)² float64 system:
#: 10 000 points = 800 MB); larger blocks are refused with a ValueError naming block_size.
MAX_TPS_POINTS = 10_000
#: Pixels used to fit the k-means fallback classification.
_KMEANS_SAMPLE = 100_000
#: Rows per block of the statistics passes over a SceneSource.
_STAT_ROWS = 256
#: Rows of the coarse image read (around the scene's middle) to estimate the scale factor.
_ESTIMATE_ROWS = 512
#: Predict the blocks of a strip in concurrent threads (one kernel thread each) when n_jobs > 1.
_CONCURRENT_BLOCKS = True
#: Control points on the cell lattice from which the TPS is evaluated by FFT instead of directly.
_FFT_MIN_POINTS = 64

#: One-line help of every user-facing option (the method registry shows these).
OPTION_HELP: dict[str, str] = {
    "scale_factor": "coarse/fine pixel size ratio s (fine pixels per coarse cell side); "
    "default: estimated from the coarse image (estimate_scale_factor)",
    "preset": "'fsdaf_idl' (the author's 2019 IDL program, default) or 'zhu2016' (the paper)",
    "window": "half window w of the final neighbourhood step, fine pixels (window (2w+1)²; default 20)",
    "n_similar": "number of similar pixels of the final step (default 20)",
    "n_pure": "purest coarse cells per class used to unmix the class changes (default 100)",
    "quantiles": "(low, high) range of coarse change kept among the purest cells (default (0.1, 0.9))",
    "min_fraction": "a cell is a candidate for a class if its fraction exceeds this (default 0.01)",
    "hi_half_window": "half window of the homogeneity index, fine pixels (default: w, or s//2 for zhu2016)",
    "dn_min": "lowest valid reflectance (default 0.0)",
    "dn_max": "highest valid reflectance (default 1.0)",
    "noise_fix": "clamp the 0.01 % / 99.99 % tails of the fine image first (default: on for fsdaf_idl)",
    "sign_rule": "reference sign rule and clamp of the residual weights (default: on for fsdaf_idl)",
    "clamp_t2": "clamp the t2 estimate to the range of C2 and the temporal prediction (fsdaf_idl)",
    "range_repair": "replace out-of-range predictions by F1 + C2 - C1 (default: on for fsdaf_idl)",
    "eps_cw": "constant added to the residual weights, reflectance (default 1e-10)",
    "final_weighting": "'idl' 1/((1+d/w)(1+S)) or 'paper' 1/(1+d/w) (default: preset's)",
    "similar_rule": "'threshold' (2σ/classes on every band) or 'class' (same class) (default: preset's)",
    "n_classes": "classes of the k-means classification used when no class map is given (default 5)",
    "seed": "seed of the k-means classification (default 0)",
    "block_size": f"block side in coarse cells; the TPS is fitted per block (default {DEFAULT_BLOCK_SIZE})",
    "tps_margin": "minimum coarse cells of TPS control points around a block's evaluation area (default 3)",
    "n_jobs": "threads of the compiled kernels and FFTs (default: numba's thread count)",
}


# --------------------------------------------------------------------------------------------
# configuration and option checking
# --------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool | np.bool_)
        and math.isfinite(float(value))
    )


def _invalid(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"FSDAF option {name}={value!r} is invalid: {allowed}")


@dataclass(frozen=True)
class FSDAFConfig:
    """All FSDAF knobs (spec section 2), resolved. Build with :meth:`from_preset`.

    Attributes:
        scale_factor: s, coarse pixel size / fine pixel size (fine pixels per coarse cell side).
        preset: name of the preset the values came from (informational).
        window: w, half window of the final neighbourhood step (window (2w+1)², fine pixels).
        n_similar: number of similar pixels in the final step.
        n_pure: k, purest coarse cells per class used by the unmixing.
        quantiles: (q_lo, q_hi) range of ΔC kept among the purest cells.
        min_fraction: a cell is a candidate for class c if f_c > min_fraction.
        hi_half_window: half window of the homogeneity index (fine pixels).
        dn_min, dn_max: valid data range (reflectance).
        noise_fix: clamp the 0.01 % / 99.99 % tails of F1 before steps 3.2-3.8.
        sign_rule: reference sign rule (13) and clamp of residual weights > 10.
        clamp_t2: clamp (18) of F2' to the range of C2 and F_TP.
        range_repair: out-of-range repair of the final prediction (3.10 step 6).
        eps_cw: constant added to the residual weights (reflectance units).
        final_weighting: "idl" 1/((1+d/w)(1+S)) or "paper" 1/(1+d/w).
        similar_rule: "threshold" (2σ/Lc on every band) or "class" (same class).
        n_classes: clusters of the k-means fallback classification (no class_map given).
        seed: seed of the fallback classification (sampling and k-means++).
        block_size: block side in coarse cells (the TPS is fitted per block).
        tps_margin: minimum extra coarse cells of TPS control points around a block's
            evaluation area.
        n_jobs: threads of the compiled kernels and FFTs; None = numba's current thread count.
    """

    scale_factor: int
    preset: str = "fsdaf_idl"
    window: int = 20
    n_similar: int = 20
    n_pure: int = 100
    quantiles: tuple[float, float] = (0.1, 0.9)
    min_fraction: float = 0.01
    hi_half_window: int = 20
    dn_min: float = 0.0
    dn_max: float = 1.0
    noise_fix: bool = True
    sign_rule: bool = True
    clamp_t2: bool = True
    range_repair: bool = True
    eps_cw: float = 1e-10
    final_weighting: FinalWeighting = "idl"
    similar_rule: SimilarRule = "threshold"
    n_classes: int = 5
    seed: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE
    tps_margin: int = 3
    n_jobs: int | None = None

    @classmethod
    def from_preset(cls, preset: str = "fsdaf_idl", *, scale_factor: int, **overrides: Any) -> FSDAFConfig:
        """Preset values (spec section 4) with ``overrides`` applied, validated.

        ``hi_half_window`` defaults to ``window`` ("fsdaf_idl") or ⌊s/2⌋ ("zhu2016").
        ``None`` overrides are ignored (they mean "preset value"). Raises ValueError naming the
        option, its value and what is allowed.
        """
        if not isinstance(preset, str) or preset not in PRESETS:
            raise _invalid("preset", preset, f"choose one of {', '.join(PRESETS)}")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        allowed = [f for f in cls.__dataclass_fields__ if f not in ("preset", "scale_factor")]
        for name in overrides:
            if name not in allowed:
                raise ValueError(
                    f"unknown FSDAF option {name}={overrides[name]!r}; "
                    f"allowed: scale_factor, preset, {', '.join(allowed)}"
                )
        if not (_is_int(scale_factor) and scale_factor >= 1):
            raise _invalid("scale_factor", scale_factor, "expected an integer >= 1, or None to estimate it")
        window = overrides.get("window", 20)
        if preset == "fsdaf_idl":
            base: dict[str, Any] = {"hi_half_window": window}
        else:
            base = {
                "hi_half_window": int(scale_factor) // 2,
                "noise_fix": False,
                "sign_rule": False,
                "clamp_t2": False,
                "range_repair": False,
                "final_weighting": "paper",
                "similar_rule": "class",
            }
        base.update(overrides)
        if "quantiles" in base and isinstance(base["quantiles"], list):
            base["quantiles"] = tuple(base["quantiles"])
        config = cls(scale_factor=int(scale_factor), preset=preset, **base)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError naming the offending option, its value and the allowed range."""

        def need_int(name: str, low: int, what: str) -> None:
            value = getattr(self, name)
            if not (_is_int(value) and value >= low):
                raise _invalid(name, value, f"expected an integer >= {low} ({what})")

        def need_bool(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise _invalid(name, value, "expected True or False")

        def need_real(name: str, ok: Callable[[float], bool], allowed: str) -> None:
            value = getattr(self, name)
            if not (_is_real(value) and ok(float(value))):
                raise _invalid(name, value, allowed)

        need_int("scale_factor", 1, "coarse/fine pixel size ratio")
        if self.preset not in PRESETS:
            raise _invalid("preset", self.preset, f"choose one of {', '.join(PRESETS)}")
        need_int("window", 1, "half window of the final step, fine pixels")
        need_int("n_similar", 1, "similar pixels per target")
        need_int("n_pure", 1, "purest cells per class")
        q = self.quantiles
        if not (
            isinstance(q, tuple | list)
            and len(q) == 2
            and all(_is_real(v) for v in q)
            and 0.0 <= q[0] <= q[1] <= 1.0
        ):
            raise _invalid("quantiles", q, "expected (q_lo, q_hi) with 0 <= q_lo <= q_hi <= 1")
        need_real("min_fraction", lambda v: 0.0 <= v < 1.0, "expected a number in [0, 1)")
        need_int("hi_half_window", 0, "half window of the homogeneity index, fine pixels")
        need_real("dn_min", lambda v: True, "expected a finite number (reflectance)")
        need_real(
            "dn_max", lambda v: v > float(self.dn_min), f"expected a finite number > dn_min={self.dn_min!r}"
        )
        for name in ("noise_fix", "sign_rule", "clamp_t2", "range_repair"):
            need_bool(name)
        need_real("eps_cw", lambda v: v >= 0.0, "expected a number >= 0 (reflectance)")
        if self.final_weighting not in ("idl", "paper"):
            raise _invalid("final_weighting", self.final_weighting, "choose 'idl' or 'paper'")
        if self.similar_rule not in ("threshold", "class"):
            raise _invalid("similar_rule", self.similar_rule, "choose 'threshold' or 'class'")
        need_int("n_classes", 1, "k-means classes")
        need_int("seed", 0, "random seed")
        need_int("block_size", 1, "block side in coarse cells")
        need_int("tps_margin", 1, "coarse cells")
        if self.n_jobs is not None and not (_is_int(self.n_jobs) and self.n_jobs >= 1):
            raise _invalid(
                "n_jobs", self.n_jobs, "expected an integer >= 1, or None for numba's thread count"
            )


def block_margin_cells(config: FSDAFConfig) -> int:
    """Margin (coarse cells) read around each block.

    ⌈w/s⌉ cells for the final step's window, plus max(⌈hi_half_window/s⌉, tps_margin) cells
    so that the homogeneity index is exact and the TPS has control points around the area where
    it is evaluated.
    """
    s = config.scale_factor
    return math.ceil(config.window / s) + max(math.ceil(config.hi_half_window / s), config.tps_margin)


@dataclass(frozen=True)
class BlockWindow:
    """One block: ``core`` (written) and ``read`` (core + margin, clipped), image coordinates."""

    core: tuple[slice, slice]
    read: tuple[slice, slice]

    @property
    def core_in_read(self) -> tuple[slice, slice]:
        """The core as slices into the read window."""
        r0, c0 = self.read[0].start, self.read[1].start
        return (
            slice(self.core[0].start - r0, self.core[0].stop - r0),
            slice(self.core[1].start - c0, self.core[1].stop - c0),
        )


def block_row_starts(height: int, *, config: FSDAFConfig) -> list[int]:
    """First scene row of every row of blocks (multiples of block_size * s)."""
    return list(range(0, height, config.block_size * config.scale_factor))


def block_windows(height: int, width: int, *, config: FSDAFConfig) -> list[BlockWindow]:
    """Tile an H x W image into cell-aligned blocks of ``block_size`` cells, raster order."""
    s = config.scale_factor
    step = config.block_size * s
    margin = block_margin_cells(config) * s
    windows = []
    for r0 in range(0, height, step):
        r1 = min(r0 + step, height)
        for c0 in range(0, width, step):
            c1 = min(c0 + step, width)
            windows.append(
                BlockWindow(
                    core=(slice(r0, r1), slice(c0, c1)),
                    read=(
                        slice(max(r0 - margin, 0), min(r1 + margin, height)),
                        slice(max(c0 - margin, 0), min(c1 + margin, width)),
                    ),
                )
            )
    return windows


def _check_tps_size(height: int, width: int, config: FSDAFConfig) -> None:
    """Refuse blocks whose TPS system would not fit in memory (ValueError naming block_size)."""
    s = config.scale_factor
    span = config.block_size + 2 * block_margin_cells(config)
    points = min(span, -(-height // s)) * min(span, -(-width // s))
    if points > MAX_TPS_POINTS:
        raise _invalid(
            "block_size",
            config.block_size,
            f"a block and its margin hold {points} TPS control points at scale_factor {s}; "
            f"at most {MAX_TPS_POINTS} are allowed: use a smaller block_size (default {DEFAULT_BLOCK_SIZE})",
        )


# --------------------------------------------------------------------------------------------
# scale factor estimate
# --------------------------------------------------------------------------------------------


#: how to give the scale factor, in the messages that need it (Python and command line)
_SET_SCALE = (
    "set it: scale_factor=N (coarse pixel size / fine pixel size, e.g. 16 for 480 m / 30 m; "
    "on the command line --option scale_factor=N or --coarse-ratio N)"
)


def estimate_scale_factor(coarse: np.ndarray) -> int:
    """Estimate s (fine pixels per coarse pixel side) from a coarse image on the fine grid.

    Method, in order:

    1. **Block replication** (nearest-neighbour resampling, block means): if at least 45 % of the
       finite adjacent pixel pairs are exactly equal and value changes happen on a sparse set of
       rows and columns, s is the median spacing of those rows/columns (exact for replicated
       blocks; the lgc-flood sample gives 16).
    2. **Periodic resampling grid** (bilinear/cubic resampling of a grid aligned with the fine
       grid): the mean |gradient| per column (and per row) is periodic with the coarse pixel
       period. The period is the one maximising the F statistic of the profile folded on it
       (s in [2, 64], step 0.02); it is used when F >= 10 on an axis (cia-crop: 9.2, true ~9.3;
       profiles without a resampling grid gave F < 8 in our trials).
    3. **Correlation length of the gradients** otherwise: for bilinear resampling of independent
       coarse pixels the gradient is constant over a coarse pixel and its autocorrelation falls
       linearly to 0 at lag s, so s ≈ twice the lag where it drops to 1/2; the larger of the row
       and column estimates is taken (a grid sheared by reprojection decorrelates faster along
       one axis; estarfm-site gives ~14-15, true ~16.7). This is a scale of the image's smooth
       structure, not an exact ratio: pass the true ratio when the pixel sizes are known.

    Args:
        coarse: (C, H, W) or (H, W) coarse image on the fine grid; NaN = invalid (ignored).
    Returns:
        s >= 1, rounded to an integer.
    Raises:
        ValueError: the image has no structure to measure (constant, too small, or no finite
            adjacent pixels).
    """
    a = np.asarray(coarse, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"estimate_scale_factor needs a (C, H, W) or (H, W) image, got shape {a.shape}")
    if min(a.shape[1:]) < 4:
        raise ValueError(
            f"cannot estimate scale_factor from an image of {a.shape[1]} x {a.shape[2]} pixels; {_SET_SCALE}"
        )
    blocks = _replicated_block_size(a)
    if blocks is not None:
        return blocks
    # central crop: the estimate needs a few hundred pixels per axis, not the whole scene
    h, w = a.shape[1:]
    r0, c0 = max(0, (h - 1024) // 2), max(0, (w - 1024) // 2)
    a = a[:, r0 : r0 + 1024, c0 : c0 + 1024]
    periods = []
    for axis in (1, 2):
        found = _profile_period(a, axis)
        if found is not None:
            periods.append(found)
    if periods:
        periods.sort(key=lambda p: -p[1])
        best = periods[0][0]
        if len(periods) == 2 and abs(periods[0][0] - periods[1][0]) <= 0.1 * best:
            best = 0.5 * (periods[0][0] + periods[1][0])
        return max(1, round(best))
    widths = [width for axis in (1, 2) if (width := _gradient_correlation_width(a, axis)) is not None]
    if not widths:
        raise ValueError(
            "cannot estimate scale_factor: the coarse image has no measurable structure (constant?); "
            + _SET_SCALE
        )
    return max(1, round(max(widths)))


def _replicated_block_size(a: Array) -> int | None:
    """Block size of a block-replicated image, or None if it is not one."""
    equal = pairs = 0
    spacings = []
    dense = False
    for axis in (1, 2):
        d = np.diff(a, axis=axis)
        finite = np.isfinite(d)
        pairs += int(finite.sum())
        equal += int((finite & (d == 0)).sum())
        other = tuple(i for i in (0, 1, 2) if i != axis)
        changes = np.flatnonzero((finite & (d != 0)).any(axis=other)) + 1  # first pixel of a new block
        if changes.size > 0.5 * d.shape[axis]:
            dense = True
        if changes.size >= 2:
            spacings.append(np.diff(changes))
        elif changes.size == 1:
            spacings.append(changes)  # blocks are aligned with pixel 0
    if pairs == 0:
        raise ValueError("cannot estimate scale_factor: no two adjacent finite pixels in the coarse image")
    if equal < 0.45 * pairs or dense:
        return None
    if not spacings:
        raise ValueError(f"cannot estimate scale_factor from a constant coarse image; {_SET_SCALE}")
    return max(1, int(np.median(np.concatenate(spacings))))


def estimate_cell_offset(coarse: np.ndarray, scale_factor: int) -> tuple[int, int]:
    """(row, column) of the first full coarse cell of a block-replicated coarse image on the fine grid.

    FSDAF's cells are s x s squares from pixel (0, 0); a scene cut from a larger one rarely starts on
    a coarse pixel's edge. In a block-replicated image (nearest resampling, block means) the values
    change where a coarse pixel starts: the offset on an axis is the position modulo s shared by at
    least 80 % of those changes (0 when none is, or when the image is not block-replicated: cells of
    a smoothly resampled image have no edges to find).

    Args:
        coarse: (C, H, W) or (H, W) coarse image on the fine grid; NaN = invalid.
        scale_factor: s, fine pixels per coarse pixel side.
    Returns:
        (row offset, column offset), each in [0, s).
    """
    a = np.asarray(coarse, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if scale_factor < 2 or min(a.shape[1:]) < 2:
        return 0, 0
    try:
        if _replicated_block_size(a) is None:
            return 0, 0
    except ValueError:
        return 0, 0
    offsets = []
    for axis in (1, 2):
        d = np.diff(a, axis=axis)
        other = tuple(i for i in (0, 1, 2) if i != axis)
        changes = np.flatnonzero((np.isfinite(d) & (d != 0)).any(axis=other)) + 1
        phase = 0
        if changes.size:
            counts = np.bincount(changes % scale_factor, minlength=scale_factor)
            if counts.max() >= 0.8 * changes.size:
                phase = int(counts.argmax())
        offsets.append(phase)
    return offsets[0], offsets[1]


def _gradient_profile(a: Array, axis: int) -> Array:
    """Mean |first difference| along ``axis`` at each position of that axis (bands weigh equally)."""
    g = np.abs(np.diff(a, axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.nanmean(g, axis=(1, 2), keepdims=True)
        g = g / np.where(scale > 0, scale, np.nan)
    other = (0, 2) if axis == 1 else (0, 1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (nodata)
        profile = np.nanmean(g, axis=other)
    return np.asarray(profile[np.isfinite(profile)])


def _profile_period(a: Array, axis: int) -> tuple[float, float] | None:
    """(period, F) of the |gradient| profile folded on its best period, if significant (F >= 20)."""
    p = _gradient_profile(a, axis)
    n = p.size
    if n < 12:
        return None
    # remove the slow trend (land cover) so that only the resampling grid's period remains
    kernel = np.ones(min(129, n)) / min(129, n)
    trend = np.convolve(np.pad(p, kernel.size // 2, mode="edge"), kernel, mode="valid")[:n]
    p = p - trend
    total = float(((p - p.mean()) ** 2).sum())
    if total <= 0:
        return None
    x = np.arange(n, dtype=np.float64)
    best = (0.0, 0.0)
    for s in np.arange(2.0, min(64.0, n / 3.0), 0.02):
        bins = max(2, round(s))
        idx = np.floor((x % s) / s * bins).astype(np.intp)
        count = np.bincount(idx, minlength=bins)
        mean = np.bincount(idx, p, minlength=bins) / np.maximum(count, 1)
        between = float((count * (mean - p.mean()) ** 2).sum())
        within = max(total - between, 1e-300)
        f_stat = (between / (bins - 1)) / (within / max(n - bins, 1))
        if f_stat > best[1]:
            best = (float(s), f_stat)
    return best if best[1] >= 10.0 else None


def _gradient_correlation_width(a: Array, axis: int) -> float | None:
    """Twice the lag (pixels) at which the autocorrelation of the gradient along ``axis`` is 1/2."""
    g = np.diff(a, axis=axis)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (nodata)
        g = g - np.nanmean(g, axis=axis, keepdims=True)
    g = np.where(np.isfinite(g), g, 0.0)
    n = g.shape[axis]
    if n < 4:
        return None
    spectrum = np.abs(np.fft.rfft(g, 2 * n, axis=axis)) ** 2
    acf = np.fft.irfft(spectrum, axis=axis)
    acf = np.moveaxis(acf, axis, -1).reshape(-1, 2 * n).sum(axis=0)[: n // 2]
    if not acf[0] > 0:
        return None
    acf = acf / acf[0]
    below = np.flatnonzero(acf <= 0.5)
    if below.size == 0:
        return float(n)
    i = int(below[0])
    lag = i - 1 + (acf[i - 1] - 0.5) / (acf[i - 1] - acf[i])
    return float(2.0 * lag)


# --------------------------------------------------------------------------------------------
# coarse-cell helpers
# --------------------------------------------------------------------------------------------


def _cell_sum(values: Array, s: int) -> Array:
    """Sum over s x s cells aligned with pixel (0, 0): (..., h, w) -> (..., ⌈h/s⌉, ⌈w/s⌉)."""
    h, w = values.shape[-2:]
    nr, nc = -(-h // s), -(-w // s)
    if nr * s != h or nc * s != w:
        pad = [(0, 0)] * (values.ndim - 2) + [(0, nr * s - h), (0, nc * s - w)]
        values = np.pad(values, pad)
    shaped = values.reshape(*values.shape[:-2], nr, s, nc, s)
    return np.asarray(shaped.sum(axis=(-3, -1)))


def _cell_expand(cells: Array, s: int, shape: tuple[int, int]) -> Array:
    """Broadcast per-cell values back to the fine grid: (..., nr, nc) -> (..., h, w)."""
    big = np.repeat(np.repeat(cells, s, axis=-2), s, axis=-1)
    return big[..., : shape[0], : shape[1]]


def _as_float(image: Array) -> Array:
    """Float view of an image: float32/float64 kept, anything else (ints, float16) -> float32."""
    image = np.asarray(image)
    if image.dtype in (np.float32, np.float64):
        return image
    return image.astype(np.float32)


# --------------------------------------------------------------------------------------------
# compiled kernels
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _threads(n_jobs: int | None) -> Iterator[int]:
    """Run numba kernels with ``n_jobs`` threads (None: numba's current setting); yields the count."""
    previous = numba.get_num_threads()
    if n_jobs is None:
        yield previous
        return
    numba.set_num_threads(max(1, min(int(n_jobs), numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
    try:
        yield numba.get_num_threads()
    finally:
        numba.set_num_threads(previous)


@functools.cache
def _kernels() -> SimpleNamespace:
    """numba kernels, compiled on first use and cached on disk.

    No fastmath: the final step's keys must round exactly like the NumPy reference (ties are
    broken by key, then offset order), and the TPS sums feed an ill-conditioned system.
    """
    # nogil: blocks of a strip run in concurrent Python threads (see _SceneModel.predict_strip)
    parallel = numba.njit(parallel=True, nogil=True, cache=True)
    serial = numba.njit(nogil=True, cache=True)

    @parallel
    def similar(f1, f1p, chp, nbp, labels, off_dy, off_dx, off_flat, odist, factor, th, one, eps_key,  # type: ignore[no-untyped-def]
                target_key, eps_den, big, r0, r1, c0, c1, n_sel, use_threshold, idl, sel, count,
                out):  # fmt: skip
        # Selection (first loop): the targets of one row at a time, every window offset as a
        # vector over the row's targets (contiguous slices, so that LLVM vectorises); the row's
        # selection goes to sel/count. Weights (second loop): tiles of targets, reading the
        # selected pixels from the pixel-major copies f1p/chp (see similar_pixel_prediction).
        # Each target keeps its n_sel best entries (key bits << 32 | offset rank), ascending:
        # keys are >= 0, so their float32 bit patterns sort like the floats and the packed value
        # orders by key, then by offset rank. A
        # candidate failing the threshold (or NaN) gets the key `big` (+inf), which is never
        # selected; a passing candidate's key is finite for any data below ~1e29 in magnitude.
        nb, h, wd = f1.shape
        ntx = c1 - c0
        # these non-negative int64 patterns order like the float64 values they encode, so the
        # sorted list is updated with vector float64 min/max; +inf marks an empty slot
        empty = np.int64(0x7FF0000000000000)
        no_key = np.int32(0x7F800000)  # bits of a +inf float32 key: never below a target's worst
        for r in numba.prange(r1 - r0):
            ty = r0 + r
            # 1 / (|F1| + 1e-8) of the row's targets, in F1's precision as the NumPy reference
            inv = np.empty((nb, ntx), f1.dtype)
            for b in range(nb):
                for x in range(ntx):
                    inv[b, x] = one / (abs(f1[b, ty, c0 + x]) + eps_den)
            # column 0 of each target's list is a sentinel (+0.0) below every entry, so that the
            # insertion is one vector expression: new[j] = min(list[j], max(list[j - 1], packed))
            best = np.full((ntx, n_sel + 1), empty, np.int64)
            best[:, 0] = 0
            bestf = best.view(np.float64)
            worst = np.full(ntx, no_key, np.int32)  # key bits of each target's n_sel-th entry
            tvalid = np.empty(ntx, np.bool_)
            acc = np.empty(ntx, f1.dtype)
            keys = np.empty(ntx, np.float32)
            kbits = keys.view(np.int32)
            # flags of the targets to update, read 8 per 64-bit word: most words are zero
            flag = np.zeros(((ntx + 15) // 8) * 8, np.uint8)
            flag64 = flag.view(np.uint64)
            idx = np.empty(ntx + 8, np.int64)
            packed = np.empty(1, np.int64)
            packed_f = packed.view(np.float64)
            keys[0] = target_key
            target = np.int64(kbits[0]) << 32  # the target itself: offset rank 0
            for x in range(ntx):
                good = True
                for b in range(nb):
                    if not np.isfinite(f1[b, ty, c0 + x]):
                        good = False
                tvalid[x] = good
                if good:
                    best[x, 1] = target
                    if n_sel == 1:
                        worst[x] = kbits[0]
            for oid in range(1, off_dy.size):  # nearest offsets first: good keys early
                dy = off_dy[oid]
                dx = off_dx[oid]
                qy = ty + dy
                if qy < 0 or qy >= h:
                    continue
                xa = max(0, -dx - c0)
                xb = min(ntx, wd - dx - c0)
                n = xb - xa
                if n <= 0:
                    continue
                accv = acc[xa:xb]
                # S summed band after band in f1's precision, as the NumPy reference does
                q = f1[0, qy, c0 + dx + xa : c0 + dx + xb]
                t = f1[0, ty, c0 + xa : c0 + xb]
                iv = inv[0, xa:xb]
                thb = th[0]
                for i in range(n):
                    d = abs(q[i] - t[i])
                    accv[i] = d * iv[i] if d < thb else big
                for b in range(1, nb):
                    q = f1[b, qy, c0 + dx + xa : c0 + dx + xb]
                    t = f1[b, ty, c0 + xa : c0 + xb]
                    iv = inv[b, xa:xb]
                    thb = th[b]
                    for i in range(n):
                        d = abs(q[i] - t[i])
                        a = accv[i] + d * iv[i]
                        accv[i] = a if d < thb else big
                kv = keys[xa:xb]
                kb = kbits[xa:xb]
                wv = worst[xa:xb]
                if use_threshold:  # reference key (S + 1e-5)(10 + d/w), rounded to float32
                    fac = factor[oid]
                    for i in range(n):
                        kv[i] = np.float32(np.float64(accv[i] + eps_key) * fac)
                    for i in range(n):
                        flag[i] = kb[i] < wv[i]
                else:
                    lq = labels[qy, c0 + dx + xa : c0 + dx + xb]
                    lt = labels[ty, c0 + xa : c0 + xb]
                    for i in range(n):
                        kv[i] = np.float32(accv[i])
                    for i in range(n):
                        flag[i] = (lq[i] == lt[i]) & (lt[i] > 0) & (kb[i] < wv[i])
                for i in range(n, n + 8):
                    flag[i] = 0
                m = 0
                for g in range((n + 7) >> 3):
                    word = flag64[g]
                    if word == 0:
                        continue
                    for k in range(8):
                        idx[m] = 8 * g + k
                        m += (word >> np.uint64(8 * k)) & np.uint64(1)
                for u in range(m):
                    i = idx[u]
                    x = xa + i
                    packed[0] = (np.int64(kb[i]) << 32) | oid
                    p = packed_f[0]
                    for j in range(n_sel, 0, -1):  # reads j - 1 before it is written: vectorises
                        lo = bestf[x, j - 1] if bestf[x, j - 1] > p else p
                        bestf[x, j] = bestf[x, j] if bestf[x, j] < lo else lo
                    worst[x] = min(np.int32(best[x, n_sel] >> 32), no_key)
            for x in range(ntx):
                found = 0
                if tvalid[x]:
                    while found < n_sel and best[x, found + 1] != empty:
                        sel[r, x, found] = np.int32(best[x, found + 1] & 0xFFFFFFFF)
                        found += 1
                count[r, x] = found if tvalid[x] else -1
        # the weights, tile by tile: a tile's window fits in the L2 cache; per target, the selected
        # pixels' bands are contiguous (f1p, chp: (h * w * nbp,), bands padded to nbp lanes)
        tile = 24
        for tr in numba.prange((r1 - r0 + tile - 1) // tile):
            omega = np.empty(n_sel)
            pos = np.empty(n_sel, np.uint64)
            tval = np.empty(nbp)
            tden = np.empty(nbp)
            term = np.empty(nbp)
            wsum = np.empty(nbp)
            for tc in range(0, ntx, tile):
                for r in range(tr * tile, min(tr * tile + tile, r1 - r0)):
                    ty = r0 + r
                    for x in range(tc, min(tc + tile, ntx)):
                        n_found = count[r, x]
                        if n_found < 0:
                            for b in range(nb):
                                out[b, r, x] = np.nan
                            continue
                        tpix = ty * wd + c0 + x
                        tp = np.uint64(tpix * nbp)
                        for b in range(nbp):
                            v = f1p[tp + np.uint64(b)]
                            tval[b] = np.float64(v)
                            tden[b] = np.float64(abs(v) + eps_den)
                            wsum[b] = 0.0
                        # eqs. (23)-(25): spectral distance in float64, summed band by band
                        total = 0.0
                        for j in range(n_found):
                            oid = sel[r, x, j]
                            qp = np.uint64((tpix + off_flat[oid]) * nbp)
                            pos[j] = qp
                            for b in range(nbp):
                                term[b] = abs(np.float64(f1p[qp + np.uint64(b)]) - tval[b]) / tden[b]
                            spectral = 0.0
                            for b in range(nb):
                                spectral += term[b]
                            o = odist[oid]
                            if idl:
                                o = o / (1.0 + spectral)
                            omega[j] = o
                            total += o
                        for j in range(n_found):
                            weight = omega[j] / total
                            qp = pos[j]
                            for b in range(nbp):
                                wsum[b] += weight * chp[qp + np.uint64(b)]
                        for b in range(nb):
                            out[b, r, x] = tval[b] + wsum[b]

    @parallel
    def pixel_major(f1, change, nbp, f1p, chp):  # type: ignore[no-untyped-def]
        # (nb, h, w) band-major -> (h * w * nbp,) pixel-major, padding lanes zero
        nb, h, w = f1.shape
        for y in numba.prange(h):
            for x in range(w):
                p = (y * w + x) * nbp
                for b in range(nb):
                    f1p[p + b] = f1[b, y, x]
                    chp[p + b] = change[b, y, x]
                for b in range(nb, nbp):
                    f1p[p + b] = 0
                    chp[p + b] = 0.0

    # a zero pivot gives inf/NaN, as LAPACK would, rather than ZeroDivisionError
    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def lu_solve(lu, piv, rhs):  # type: ignore[no-untyped-def]
        # LAPACK getrs with the factors of getrf (lu column-major), rhs (k, n) solved in place;
        # column-oriented loops: every inner loop runs down a contiguous column of lu, for three
        # right-hand sides at a time (each one's operations in the same order as alone)
        n = lu.shape[0]
        m = rhs.shape[0]
        for k in range(m):
            x = rhs[k]
            for i in range(n):
                p = piv[i]
                if p != i:
                    x[i], x[p] = x[p], x[i]
        k = 0
        while k < m:
            if k + 3 <= m:
                a, b, c = rhs[k], rhs[k + 1], rhs[k + 2]
                for j in range(n):
                    aj, bj, cj = a[j], b[j], c[j]
                    for i in range(j + 1, n):
                        v = lu[i, j]
                        a[i] -= v * aj
                        b[i] -= v * bj
                        c[i] -= v * cj
                for j in range(n - 1, -1, -1):
                    d = lu[j, j]
                    a[j] /= d
                    b[j] /= d
                    c[j] /= d
                    aj, bj, cj = a[j], b[j], c[j]
                    for i in range(j):
                        v = lu[i, j]
                        a[i] -= v * aj
                        b[i] -= v * bj
                        c[i] -= v * cj
                k += 3
            else:
                x = rhs[k]
                for j in range(n):
                    xj = x[j]
                    for i in range(j + 1, n):
                        x[i] -= lu[i, j] * xj
                for j in range(n - 1, -1, -1):
                    x[j] /= lu[j, j]
                    xj = x[j]
                    for i in range(j):
                        x[i] -= lu[i, j] * xj
                k += 1

    @parallel
    def tps_system(u, system):  # type: ignore[no-untyped-def]
        p = u.shape[0]
        for i in numba.prange(p):
            for j in range(p):
                dr = u[i, 0] - u[j, 0]
                dc = u[i, 1] - u[j, 1]
                r2 = dr * dr + dc * dc
                system[i, j] = 0.5 * r2 * np.log(r2) if r2 > 0 else 0.0
            system[i, p] = 1.0
            system[i, p + 1] = u[i, 1]
            system[i, p + 2] = u[i, 0]
            system[p, i] = 1.0
            system[p + 1, i] = u[i, 1]
            system[p + 2, i] = u[i, 0]

    @parallel
    def tps_direct(pr, pc, beta, ur, uc, out):  # type: ignore[no-untyped-def]
        npts, nb = beta.shape
        for r in numba.prange(ur.size):
            for x in range(uc.size):
                for i in range(npts):
                    dr = ur[r] - pr[i]
                    dc = uc[x] - pc[i]
                    r2 = dr * dr + dc * dc
                    if r2 > 0:
                        k = 0.5 * r2 * np.log(r2)
                        for b in range(nb):
                            out[b, r, x] += k * beta[i, b]

    @parallel
    def residual_share(temporal, spatial, residual, homog, valid, s, sign_rule, eps_cw, out):  # type: ignore[no-untyped-def]
        # spec eqs. 12-16, a cell's weights normalised over it; each pass goes row by row across a
        # row of cells, so that each cell's sums take its pixels in the same order as cell by cell
        # (rows, then columns), with many cells' sums in flight at once
        nb, h, w = temporal.shape
        nr, nc = residual.shape[1:]
        for ci in numba.prange(nr):
            ra, rb = ci * s, min(ci * s + s, h)
            count = np.zeros(nc, np.int64)
            for y in range(ra, rb):
                for cj in range(nc):
                    for x in range(cj * s, min(cj * s + s, w)):
                        count[cj] += valid[y, x]
            total = np.empty(nc)
            mean = np.empty(nc)
            for b in range(nb):
                total[:] = 0.0
                for y in range(ra, rb):
                    for cj in range(nc):
                        r = residual[b, ci, cj]
                        e_he = abs(r) if sign_rule else r
                        t = total[cj]
                        for x in range(cj * s, min(cj * s + s, w)):
                            cw = 0.0
                            if valid[y, x]:
                                e = spatial[b, y, x] - temporal[b, y, x]
                                if sign_rule:
                                    e = abs(min(e, 0.0) if r <= 0 else max(e, 0.0))
                                hi = homog[y, x]
                                cw = e * hi + e_he * (1.0 - hi) + eps_cw
                            out[b, y, x] = cw
                            t += cw
                        total[cj] = t
                for cj in range(nc):
                    mean[cj] = total[cj] / count[cj]
                if sign_rule:
                    total[:] = 0.0
                    for y in range(ra, rb):
                        for cj in range(nc):
                            m, t = mean[cj], total[cj]
                            for x in range(cj * s, min(cj * s + s, w)):
                                wt = out[b, y, x] / m if valid[y, x] else 0.0
                                out[b, y, x] = wt
                                t += wt
                            total[cj] = t
                    for cj in range(nc):
                        mean[cj] = total[cj] / count[cj]  # mean weight
                    total[:] = 0.0
                    for y in range(ra, rb):
                        for cj in range(nc):
                            m, t = mean[cj], total[cj]
                            for x in range(cj * s, min(cj * s + s, w)):
                                wt = out[b, y, x]
                                if wt > 10.0:
                                    wt = m
                                out[b, y, x] = wt
                                if valid[y, x]:
                                    t += wt
                            total[cj] = t
                    for cj in range(nc):
                        mean[cj] = total[cj] / count[cj]
                for y in range(ra, rb):
                    for cj in range(nc):
                        m, r = mean[cj], residual[b, ci, cj]
                        for x in range(cj * s, min(cj * s + s, w)):
                            out[b, y, x] = out[b, y, x] / m * r if valid[y, x] else 0.0

    @parallel
    def homogeneity(labels, n_classes, half, out):  # type: ignore[no-untyped-def]
        # integral image of each class, then one window lookup per pixel (exact integer counts)
        h, w = labels.shape
        ii = np.zeros((n_classes + 1, h + 1, w + 1), np.int64)
        for c in numba.prange(1, n_classes + 1):
            for y in range(h):
                run = 0
                for x in range(w):
                    run += labels[y, x] == c
                    ii[c, y + 1, x + 1] = ii[c, y, x + 1] + run
        for y in numba.prange(h):
            r0, r1 = max(y - half, 0), min(y + half + 1, h)
            for x in range(w):
                c = labels[y, x]
                if c <= 0:
                    out[y, x] = np.nan
                    continue
                c0, c1 = max(x - half, 0), min(x + half + 1, w)
                same = ii[c, r1, c1] - ii[c, r0, c1] - ii[c, r1, c0] + ii[c, r0, c0]
                out[y, x] = same / ((r1 - r0) * (c1 - c0))

    @parallel
    def temporal_prediction(f1, noise, use_noise, dn_min, dn_max, labels, change, fixed, temporal):  # type: ignore[no-untyped-def]
        # F1' (noise clamp, spec 3.0) and F_TP = F1' + ΔF(class) (eq. 7), float64
        nb, h, w = f1.shape
        for y in numba.prange(h):
            for b in range(nb):
                low, high, fill_low, fill_high = noise[0, b], noise[1, b], noise[2, b], noise[3, b]
                for x in range(w):
                    v = np.float64(f1[b, y, x])
                    if use_noise:
                        if np.isfinite(fill_low) and (v <= low or v < dn_min):
                            v = fill_low
                        if np.isfinite(fill_high) and (v >= high or v > dn_max):
                            v = fill_high
                    fixed[b, y, x] = v
                    temporal[b, y, x] = v + change[labels[y, x], b]

    @parallel
    def total_change(temporal, share, fixed, valid, r0, c0, clamp, low, high, out):  # type: ignore[no-untyped-def]
        # eqs. 17-19 on the evaluation area, whose (0, 0) is (r0, c0) in temporal and fixed:
        # F2' = F_TP + r, clamped to [low, high] as np.clip (a NaN bound or value gives NaN),
        # ΔF_tot = F2' - F1' at valid pixels, NaN elsewhere
        nb, h, w = out.shape
        for y in numba.prange(h):
            for b in range(nb):
                lo, hi = low[b], high[b]
                nan_bound = np.isnan(lo) or np.isnan(hi)
                for x in range(w):
                    v = np.nan
                    if valid[y, x]:
                        v = temporal[b, r0 + y, c0 + x] + share[b, y, x]
                        if clamp:
                            if nan_bound:
                                v = np.nan
                            if v < lo:
                                v = lo
                            if v > hi:
                                v = hi
                        v -= fixed[b, r0 + y, c0 + x]
                    out[b, y, x] = v

    @parallel
    def cell_means(c1, c2, fixed, temporal, valid, s, count, means):  # type: ignore[no-untyped-def]
        # means over the valid pixels of each s x s cell of C1, C2, F1', F_TP (eqs. 1-3, 8); row by
        # row across a row of cells: each cell's sums take its pixels in the same order as cell by
        # cell (rows, then columns), with many cells' sums in flight at once
        nb, h, w = fixed.shape
        nr, nc = count.shape
        for ci in numba.prange(nr):
            ra, rb = ci * s, min(ci * s + s, h)
            n = np.zeros(nc, np.int64)
            for y in range(ra, rb):
                for cj in range(nc):
                    for x in range(cj * s, min(cj * s + s, w)):
                        n[cj] += valid[y, x]
            count[ci] = n
            acc = np.empty((4, nc))
            for b in range(nb):
                acc[:] = 0.0
                for y in range(ra, rb):
                    for cj in range(nc):
                        s1, s2, s3, s4 = acc[0, cj], acc[1, cj], acc[2, cj], acc[3, cj]
                        for x in range(cj * s, min(cj * s + s, w)):
                            if valid[y, x]:
                                s1 += np.float64(c1[b, y, x])
                                s2 += np.float64(c2[b, y, x])
                                s3 += fixed[b, y, x]
                                s4 += temporal[b, y, x]
                        acc[0, cj], acc[1, cj], acc[2, cj], acc[3, cj] = s1, s2, s3, s4
                for cj in range(nc):
                    for q in range(4):
                        means[q, b, ci, cj] = acc[q, cj] / n[cj] if n[cj] > 0 else np.nan

    @parallel
    def cell_stats(c2, fixed, labels, valid, s, counts, npix, nvalid, f1_lo, f1_hi, c2_lo, c2_hi):  # type: ignore[no-untyped-def]
        # per cell: class counts, pixels, valid pixels; per row of cells: range of F1' per class
        # and of C2 over valid pixels (reduced over rows by the caller)
        nb, h, w = fixed.shape
        nr, nc = npix.shape
        for ci in numba.prange(nr):
            ra, rb = ci * s, min(ci * s + s, h)
            for cj in range(nc):
                ca, cb = cj * s, min(cj * s + s, w)
                npix[ci, cj] = (rb - ra) * (cb - ca)
                n = 0
                for y in range(ra, rb):
                    for x in range(ca, cb):
                        lab = labels[y, x]
                        if lab > 0:
                            counts[ci, cj, lab - 1] += 1.0
                            for b in range(nb):
                                v = fixed[b, y, x]
                                f1_lo[ci, lab - 1, b] = min(f1_lo[ci, lab - 1, b], v)
                                f1_hi[ci, lab - 1, b] = max(f1_hi[ci, lab - 1, b], v)
                        if valid[y, x]:
                            n += 1
                            for b in range(nb):
                                v2 = c2[b, y, x]
                                c2_lo[ci, b] = min(c2_lo[ci, b], v2)
                                c2_hi[ci, b] = max(c2_hi[ci, b], v2)
                nvalid[ci, cj] = n

    @serial
    def radix_digits(u, top, prefix_shift, prefix, digit_shift, mask, every, hist):  # type: ignore[no-untyped-def]
        # keys that order like the floats whose IEEE bit patterns are u (unsigned): a negative
        # value's bits inverted, others with the sign bit set; counts the digit
        # (key >> digit_shift) & mask of the keys whose bits from prefix_shift up equal prefix
        # (every: all keys); all scalars of u's unsigned type
        for i in range(u.size):
            v = u[i]
            key = ~v if (v & top) != 0 else (v | top)
            if every or (key >> prefix_shift) == prefix:
                hist[(key >> digit_shift) & mask] += 1

    @serial
    def radix_collect(u, top, prefix_shift, prefix):  # type: ignore[no-untyped-def]
        # the keys (as radix_digits) whose bits from prefix_shift up equal prefix, in input order
        out = np.empty_like(u)
        m = 0
        for i in range(u.size):
            v = u[i]
            key = ~v if (v & top) != 0 else (v | top)
            if (key >> prefix_shift) == prefix:
                out[m] = key
                m += 1
        return out[:m].copy()

    @parallel
    def all_finite(a, b, c, out):  # type: ignore[no-untyped-def]
        nb, h, w = a.shape
        for r in numba.prange(h):
            row = out[r]
            for x in range(w):
                row[x] = True
            for k in range(nb):
                ra, rb, rc = a[k, r], b[k, r], c[k, r]
                for x in range(w):
                    row[x] &= np.isfinite(ra[x]) & np.isfinite(rb[x]) & np.isfinite(rc[x])

    @parallel
    def fill_bounds(fine, valid, low, high, dn_min, dn_max, fill_low, fill_high):  # type: ignore[no-untyped-def]
        # per band: the smallest valid value above the clamp's low threshold (and >= dn_min),
        # the largest below its high threshold (and <= dn_max); folded into fill_low/fill_high
        nb, h, w = fine.shape
        for b in numba.prange(nb):
            lo = fill_low[b]
            hi = fill_high[b]
            for y in range(h):
                for x in range(w):
                    if valid[y, x]:
                        v = np.float64(fine[b, y, x])
                        if v > low[b] and v >= dn_min and v < lo:
                            lo = v
                        if v < high[b] and v <= dn_max and v > hi:
                            hi = v
            fill_low[b] = lo
            fill_high[b] = hi

    @parallel
    def nearest_centre(fine, valid, centres, c_norm, out):  # type: ignore[no-untyped-def]
        nb, h, w = fine.shape
        k = centres.shape[0]
        for r in numba.prange(h):
            for col in range(w):
                if not valid[r, col]:
                    out[r, col] = 0
                    continue
                best = 0
                best_d = np.inf
                for j in range(k):
                    dot = 0.0
                    for b in range(nb):
                        dot += np.float64(fine[b, r, col]) * centres[j, b]
                    d = c_norm[j] - 2.0 * dot
                    if d < best_d:
                        best_d = d
                        best = j
                out[r, col] = best + 1

    @serial
    def lloyd(x, centres, max_iter):  # type: ignore[no-untyped-def]
        # k-means iterations with NumPy's summation order (squared distances summed band after
        # band, centres as sequential sums over members / count), so that labels match exactly
        n, nb = x.shape
        k = centres.shape[0]
        labels = np.full(n, -1, np.int64)
        best_d = np.empty(n)
        for _ in range(max_iter):
            changed = False
            for i in range(n):
                best = 0
                bd = np.inf
                for j in range(k):
                    d = 0.0
                    for b in range(nb):
                        t = x[i, b] - centres[j, b]
                        d += t * t
                    if d < bd:
                        bd = d
                        best = j
                best_d[i] = bd
                if best != labels[i]:
                    changed = True
                labels[i] = best
            if not changed:
                break
            sums = np.zeros((k, nb))
            counts = np.zeros(k, np.int64)
            for i in range(n):
                counts[labels[i]] += 1
                for b in range(nb):
                    sums[labels[i], b] += x[i, b]
            for j in range(k):
                if counts[j] > 0:
                    for b in range(nb):
                        centres[j, b] = sums[j, b] / counts[j]
                else:  # empty cluster: move it to the worst-fitted pixel
                    far = 0
                    for i in range(1, n):
                        if best_d[i] > best_d[far]:
                            far = i
                    for b in range(nb):
                        centres[j, b] = x[far, b]
        return centres

    return SimpleNamespace(
        similar=similar,
        pixel_major=pixel_major,
        lu_solve=lu_solve,
        tps_system=tps_system,
        tps_direct=tps_direct,
        residual_share=residual_share,
        homogeneity=homogeneity,
        temporal_prediction=temporal_prediction,
        total_change=total_change,
        cell_means=cell_means,
        cell_stats=cell_stats,
        all_finite=all_finite,
        radix_digits=radix_digits,
        radix_collect=radix_collect,
        fill_bounds=fill_bounds,
        nearest_centre=nearest_centre,
        lloyd=lloyd,
    )


# --------------------------------------------------------------------------------------------
# 3.1 classification
# --------------------------------------------------------------------------------------------


def renumber_classes(class_map: Array, valid: Array) -> tuple[Array, int]:
    """Renumber the classes present among valid pixels to 1..Lc (order kept); 0 elsewhere.

    Args:
        class_map: (H, W) integer labels; <= 0 = unclassified.
        valid: (H, W) bool.
    Returns:
        ((H, W) int32 labels, Lc).
    """
    labels = np.asarray(class_map)
    keep = valid & (labels > 0)
    present = np.unique(labels[keep])
    out = np.zeros(labels.shape, dtype=np.int32)
    out[keep] = np.searchsorted(present, labels[keep]).astype(np.int32) + 1
    return out, int(present.size)


def _distinct_rows(x: Array, limit: int) -> int:
    """Number of distinct rows of ``x`` (compared as floats), counted up to ``limit``; spectra
    usually reach the limit within the first rows, where sorting them all would take a while."""
    seen: set[tuple[float, ...]] = set()
    for row in x:
        seen.add(tuple(row.tolist()))
        if len(seen) >= limit:
            break
    return len(seen)


def fit_classes(samples: Array, *, n_classes: int, seed: int, max_iter: int = 100) -> Array:
    """k-means (k-means++ seeding) on pixel spectra: the spec's deterministic ISODATA substitute.

    Args:
        samples: (N, nb) spectra of valid pixels (reflectance).
        n_classes: k (reduced to the number of distinct spectra if smaller).
        seed: seed of the k-means++ seeding.
    Returns:
        (Lc, nb) float64 centres, ordered by ascending band-1 value (class c = row c-1).
    """
    x = np.ascontiguousarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError("fit_classes needs a non-empty (N, nb) sample of valid pixels")
    k = _distinct_rows(x, n_classes)
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(x.shape[0])]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = d2.sum()
        idx = rng.choice(x.shape[0], p=d2 / total) if total > 0 else int(rng.integers(x.shape[0]))
        centres[j] = x[idx]
        d2 = np.minimum(d2, ((x - centres[j]) ** 2).sum(axis=1))
    centres = _kernels().lloyd(x, centres, max_iter)
    order = np.lexsort(centres.T[::-1])  # band 1 first, further bands break ties
    return np.asarray(centres[order])


def classify(fine: Array, valid: Array, centres: Array, *, n_jobs: int | None = None) -> Array:
    """Nearest-centre labels 1..Lc for valid pixels, 0 elsewhere.

    Args:
        fine: (nb, H, W) reflectance.
        valid: (H, W) bool.
        centres: (Lc, nb) from :func:`fit_classes`.
    Returns:
        (H, W) int32.
    """
    c = np.ascontiguousarray(centres, dtype=np.float64)
    labels = np.empty(valid.shape, dtype=np.int32)
    # |x|² is the same for every centre, so it is left out of the comparison
    with _threads(n_jobs):
        _kernels().nearest_centre(
            _as_float(fine), np.asarray(valid, dtype=bool), c, (c**2).sum(axis=1), labels
        )
    return labels


# --------------------------------------------------------------------------------------------
# 3.0 noise clamp, 3.10 similarity threshold
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseFix:
    """Reference noise clamp (3.0), per band (nb,) arrays: values <= low (or < dn_min) become
    fill_low, values >= high (or > dn_max) become fill_high."""

    low: Array
    high: Array
    fill_low: Array
    fill_high: Array
    dn_min: float
    dn_max: float


def _noise_ranks(n: int) -> tuple[int, int]:
    """0-based ranks of the noise clamp's low and high thresholds among n sorted values."""
    return math.floor(1e-4 * n), min(math.floor(0.9999 * n), n - 1)


def fit_noise_fix(values: Array, *, dn_min: float, dn_max: float) -> NoiseFix:
    """Thresholds of the noise clamp from the valid F1 values, (nb, N) (spec 3.0), in memory."""
    nb = values.shape[0]
    low, high = np.empty(nb), np.empty(nb)
    fill_low, fill_high = np.empty(nb), np.empty(nb)
    for b in range(nb):
        v = np.sort(np.asarray(values[b], dtype=np.float64))
        n = v.size
        if n == 0:
            low[b] = high[b] = fill_low[b] = fill_high[b] = np.nan
            continue
        k_lo, k_hi = _noise_ranks(n)
        lo, hi = v[k_lo], v[k_hi]
        rest_lo = v[(v > lo) & (v >= dn_min)]
        rest_hi = v[(v < hi) & (v <= dn_max)]
        low[b], high[b] = lo, hi
        # nothing left (e.g. a constant band): leave those pixels unchanged
        fill_low[b] = rest_lo[0] if rest_lo.size else np.nan
        fill_high[b] = rest_hi[-1] if rest_hi.size else np.nan
    return NoiseFix(low, high, fill_low, fill_high, float(dn_min), float(dn_max))


def apply_noise_fix(fine: Array, noise: NoiseFix) -> Array:
    """F1' = F1 with clamped tails (spec 3.0); (nb, H, W) float64."""
    out = np.array(fine, dtype=np.float64)
    for b in range(out.shape[0]):
        band = out[b]
        if np.isfinite(noise.fill_low[b]):
            band[(band <= noise.low[b]) | (band < noise.dn_min)] = noise.fill_low[b]
        if np.isfinite(noise.fill_high[b]):
            band[(band >= noise.high[b]) | (band > noise.dn_max)] = noise.fill_high[b]
    return out


def similarity_threshold(values: Array, n_classes: int) -> Array:
    """th_b = 2 sd(F1 band b, ddof 1) / Lc over valid pixels, from (nb, N) values (eq. 20)."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape[1] < 2:
        return np.zeros(v.shape[0])
    return np.asarray(2.0 * v.std(axis=1, ddof=1) / max(n_classes, 1))


class _OrderStatistics:
    """Exact k-th smallest values of streamed per-band values: radix select on float bit patterns.

    Each pass either histograms the next 16 bits of the values sharing a target's known prefix,
    or, once at most 65 536 values share it, collects them and sorts. float32 needs at most two
    passes, float64 at most four (two in practice). Memory: one 65 536-bin histogram per target.
    """

    _COLLECT = 1 << 16

    def __init__(self, ranks: Sequence[Sequence[int]], dtype: np.dtype[Any]) -> None:
        self.bits = 32 if dtype == np.float32 else 64
        self.utype = np.uint32 if self.bits == 32 else np.uint64
        self.dtype = np.float32 if self.bits == 32 else np.float64
        # per target: [band, rank left, prefix, prefix bits, mode, accumulator, value]
        self.targets: list[dict[str, Any]] = [
            {"band": b, "rank": int(k), "prefix": 0, "pbits": 0, "mode": "hist", "value": None}
            for b, band_ranks in enumerate(ranks)
            for k in band_ranks
        ]
        self._start_pass()

    @property
    def done(self) -> bool:
        return all(t["value"] is not None for t in self.targets)

    def _start_pass(self) -> None:
        for t in self.targets:
            if t["value"] is None:
                t["acc"] = np.zeros(1 << 16, np.int64) if t["mode"] == "hist" else []

    def feed(self, band: int, values: Array) -> None:
        """Values (1D) of one band from the current block; call once per block and band per pass."""
        self.add(self.contributions(band, values))

    def contributions(self, band: int, values: Array) -> list[tuple[int, Array]]:
        """What :meth:`feed` would add, as (target index, histogram or keys); changes nothing, so
        blocks can be computed in concurrent threads and added (:meth:`add`) in any order."""
        todo = [i for i, t in enumerate(self.targets) if t["band"] == band and t["value"] is None]
        if not todo or values.size == 0:
            return []
        u = np.ascontiguousarray(values, dtype=self.dtype).view(self.utype)
        kind = self.utype
        top = kind(1 << (self.bits - 1))
        kernels = _kernels()
        done: dict[tuple[str, int, int], Array] = {}  # targets sharing a prefix share the result
        out = []
        for i in todo:
            t = self.targets[i]
            pbits, prefix = t["pbits"], t["prefix"]
            spec = (t["mode"], pbits, prefix)
            if spec not in done:
                prefix_shift = kind(self.bits - pbits) if pbits else kind(0)
                if t["mode"] == "hist":
                    hist = np.zeros(1 << 16, np.int64)
                    digit_shift = kind(self.bits - pbits - 16)
                    kernels.radix_digits(
                        u, top, prefix_shift, kind(prefix), digit_shift, kind(0xFFFF), pbits == 0, hist
                    )
                    done[spec] = hist
                else:
                    done[spec] = kernels.radix_collect(u, top, prefix_shift, kind(prefix))
            out.append((i, done[spec]))
        return out

    def add(self, contributions: list[tuple[int, Array]]) -> None:
        """Accumulate :meth:`contributions` of the current pass."""
        for i, part in contributions:
            t = self.targets[i]
            if t["mode"] == "hist":
                t["acc"] += part
            else:
                t["acc"].append(part)

    def finish_pass(self) -> None:
        """Narrow every target down after a complete pass over the data."""
        for t in self.targets:
            if t["value"] is not None:
                continue
            if t["mode"] == "hist":
                cum = np.cumsum(t["acc"])
                digit = int(np.searchsorted(cum, t["rank"], side="right"))
                below = int(cum[digit - 1]) if digit > 0 else 0
                t["rank"] -= below
                t["prefix"] = (t["prefix"] << 16) | digit
                t["pbits"] += 16
                in_bin = int(cum[digit]) - below
                if t["pbits"] == self.bits:
                    t["value"] = self._value(t["prefix"])
                elif in_bin <= self._COLLECT:
                    t["mode"] = "collect"
            else:
                keys = np.sort(np.concatenate(t["acc"]))
                t["value"] = self._value(int(keys[t["rank"]]))
            t.pop("acc", None)
        self._start_pass()

    def _value(self, key: int) -> float:
        top = 1 << (self.bits - 1)
        mask = (1 << self.bits) - 1
        u = (key ^ top) if key & top else (~key & mask)
        return float(np.array([u], dtype=self.utype).view(self.dtype)[0])

    def values(self) -> list[float]:
        return [float(t["value"]) for t in self.targets]


# --------------------------------------------------------------------------------------------
# 3.2-3.3 cell table and unmixing
# --------------------------------------------------------------------------------------------


@dataclass
class CellTable:
    """Per-cell quantities for the global unmixing plus per-class ranges for the t2 clamp.

    Attributes:
        fractions: (n_cells, Lc) class fractions f_c(i) (zeroed for cells with invalid pixels).
        delta_coarse: (n_cells, nb) ΔC(i, b); NaN for cells without valid pixels.
        f1_class_min, f1_class_max: (Lc, nb) range of F1' per class (NaN if class absent).
        c2_min, c2_max: (nb,) range of C2 over valid pixels.
        cells: (n_cells, 2) global (cell row, cell col), raster order (fixes the tie order of the
            purest-cell selection, 3.3).
    """

    fractions: Array
    delta_coarse: Array
    f1_class_min: Array
    f1_class_max: Array
    c2_min: Array
    c2_max: Array
    cells: Array


def cell_table(
    coarse_t1: Array,
    fine_t1_fixed: Array,
    coarse_t2: Array,
    class_map: Array,
    valid: Array,
    *,
    scale_factor: int,
    n_classes: int,
    origin: tuple[int, int] = (0, 0),
) -> CellTable:
    """Steps (1)-(4) over a cell-aligned region (whole image, or one block of rows of it).

    Args:
        coarse_t1, fine_t1_fixed, coarse_t2: (nb, h, w) reflectance; F1 after the noise clamp.
        class_map: (h, w) labels 1..Lc, 0 = invalid.
        valid: (h, w) bool.
        scale_factor: s. The region must start on a cell boundary; trailing partial cells are
            cells with fewer pixels.
        n_classes: Lc.
        origin: (row, col) of the region in the image, multiples of s.
    """
    s = scale_factor
    if origin[0] % s or origin[1] % s:
        raise ValueError(f"cell_table region origin {origin} is not on the {s}-pixel cell grid")
    nb, h, w = fine_t1_fixed.shape
    nr, nc = -(-h // s), -(-w // s)
    counts = np.zeros((nr, nc, n_classes))
    pixels = np.empty((nr, nc), np.int64)
    count = np.empty((nr, nc), np.int64)
    f1_lo, f1_hi = np.full((nr, n_classes, nb), np.inf), np.full((nr, n_classes, nb), -np.inf)
    c2_dtype = _as_float(coarse_t2).dtype
    c2_lo, c2_hi = np.full((nr, nb), np.inf, c2_dtype), np.full((nr, nb), -np.inf, c2_dtype)
    _kernels().cell_stats(
        np.ascontiguousarray(_as_float(coarse_t2)), np.ascontiguousarray(fine_t1_fixed, dtype=np.float64),
        np.ascontiguousarray(class_map, dtype=np.int64), np.ascontiguousarray(valid, dtype=bool),
        s, counts, pixels, count, f1_lo, f1_hi, c2_lo, c2_hi,
    )  # fmt: skip
    # cell means as NumPy sums them (in the inputs' precision), as the reference does
    with np.errstate(invalid="ignore", divide="ignore"):
        c1 = _cell_sum(np.where(valid, coarse_t1, 0.0), s) / count
        c2 = _cell_sum(np.where(valid, coarse_t2, 0.0), s) / count
    delta = (c2 - c1).reshape(nb, -1).T
    fractions = (counts / pixels[:, :, None]).reshape(-1, n_classes)
    fractions[fractions.sum(axis=1) <= 0.999] = 0.0
    f1_min, f1_max = f1_lo.min(axis=0, initial=np.inf), f1_hi.max(axis=0, initial=-np.inf)
    f1_min[~np.isfinite(f1_min)] = np.nan
    f1_max[~np.isfinite(f1_max)] = np.nan
    if count.sum() > 0:
        c2_min, c2_max = c2_lo.min(axis=0).astype(np.float64), c2_hi.max(axis=0).astype(np.float64)
    else:
        c2_min = c2_max = np.full(nb, np.nan)
    cr, cc = np.meshgrid(
        np.arange(count.shape[0]) + origin[0] // s,
        np.arange(count.shape[1]) + origin[1] // s,
        indexing="ij",
    )
    cells = np.column_stack([cr.ravel(), cc.ravel()])
    return CellTable(fractions, delta, f1_min, f1_max, c2_min, c2_max, cells)


def merge_cell_tables(tables: Sequence[CellTable]) -> CellTable:
    """Concatenate the cells of several regions, raster order of the cells."""
    cells = np.concatenate([t.cells for t in tables])
    order = np.lexsort((cells[:, 1], cells[:, 0]))
    return CellTable(
        fractions=np.concatenate([t.fractions for t in tables])[order],
        delta_coarse=np.concatenate([t.delta_coarse for t in tables])[order],
        f1_class_min=np.fmin.reduce([t.f1_class_min for t in tables]),
        f1_class_max=np.fmax.reduce([t.f1_class_max for t in tables]),
        c2_min=np.fmin.reduce([t.c2_min for t in tables]),
        c2_max=np.fmax.reduce([t.c2_max for t in tables]),
        cells=cells[order],
    )


class _Unmixing:
    """Streaming accumulator of the unmixing (3.3): feed cell rows in raster order, then solve.

    Keeps the per-band statistics of ΔC over all cells (count, mean and M2 merged as in Chan et
    al., min, max) and, per class, the ``n_pure`` purest cells seen so far (fraction descending,
    ties by ascending cell order): memory O(Lc · n_pure), whatever the scene size.
    """

    def __init__(self, n_classes: int, n_bands: int, *, n_pure: int, min_fraction: float) -> None:
        self.lc, self.nb = n_classes, n_bands
        self.n_pure, self.min_fraction = n_pure, min_fraction
        self.count = 0
        self.mean = np.zeros(n_bands)
        self.m2 = np.zeros(n_bands)
        self.total = np.zeros(n_bands)
        self.low = np.full(n_bands, np.inf)
        self.high = np.full(n_bands, -np.inf)
        # per class: (fraction of this class, all fractions (n, Lc), ΔC (n, nb))
        self.pure: list[tuple[Array, Array, Array]] = [
            (np.zeros(0), np.zeros((0, n_classes)), np.zeros((0, n_bands))) for _ in range(n_classes)
        ]

    def add(self, fractions: Array, delta_coarse: Array) -> None:
        """Cells (rows) of one region, in raster order after every region fed before."""
        f = np.asarray(fractions, dtype=np.float64)
        dc = np.asarray(delta_coarse, dtype=np.float64)
        ok = np.isfinite(dc).all(axis=1)
        f, dc = f[ok], dc[ok]
        n = dc.shape[0]
        if n == 0:
            return
        mean = dc.mean(axis=0)
        m2 = ((dc - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.count = total
        self.total += dc.sum(axis=0)
        self.low = np.minimum(self.low, dc.min(axis=0))
        self.high = np.maximum(self.high, dc.max(axis=0))
        for c in range(self.lc):
            cand = np.flatnonzero(f[:, c] > self.min_fraction)
            if cand.size == 0:
                continue
            kept_f, kept_rows, kept_dc = self.pure[c]
            frac = np.concatenate([kept_f, f[cand, c]])
            rows = np.concatenate([kept_rows, f[cand]])
            dcs = np.concatenate([kept_dc, dc[cand]])
            order = np.argsort(-frac, kind="stable")[: self.n_pure]
            self.pure[c] = (frac[order], rows[order], dcs[order])

    def solve(self, quantiles: tuple[float, float]) -> Array:
        """ΔF (Lc, nb) by bounded least squares (eqs. 5-6)."""
        out = np.zeros((self.lc, self.nb))
        if self.count == 0:
            return out
        sd = np.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else np.zeros(self.nb)
        lo_b, hi_b = self.low - sd, self.high + sd
        mean = self.total / self.count
        for b in range(self.nb):
            xs, ys = [], []
            for _, rows, dcs in self.pure:
                n = dcs.shape[0]
                if n == 0:
                    continue
                v = np.sort(dcs[:, b])
                a = v[math.floor(quantiles[0] * n + 1e-9)]
                z = v[min(math.floor(quantiles[1] * n + 1e-9), n - 1)]
                keep = (dcs[:, b] >= a) & (dcs[:, b] <= z)
                xs.append(rows[keep])
                ys.append(dcs[keep, b])
            x = np.concatenate(xs) if xs else np.zeros((0, self.lc))
            y = np.concatenate(ys) if ys else np.zeros(0)
            present = (x != 0).any(axis=0)
            g = np.full(self.lc, mean[b])  # classes never present above min_fraction
            if present.any():
                if hi_b[b] <= lo_b[b]:
                    g[present] = lo_b[b]
                else:
                    res = lsq_linear(x[:, present], y, bounds=(lo_b[b], hi_b[b]), method="bvls")
                    g[present] = res.x
            out[:, b] = g
        return out


def unmix_class_change(
    fractions: Array,
    delta_coarse: Array,
    *,
    n_pure: int = 100,
    quantiles: tuple[float, float] = (0.1, 0.9),
    min_fraction: float = 0.01,
) -> Array:
    """Class-level temporal change ΔF by bounded least squares (spec 3.3, eqs. 5-6).

    Args:
        fractions: (n_cells, Lc) class fractions, cells in raster order.
        delta_coarse: (n_cells, nb) coarse change ΔC; NaN rows (no valid pixels) are ignored.
    Returns:
        (Lc, nb) float64 ΔF(c, b).
    """
    f = np.asarray(fractions, dtype=np.float64)
    dc = np.asarray(delta_coarse, dtype=np.float64)
    acc = _Unmixing(f.shape[1], dc.shape[1], n_pure=n_pure, min_fraction=min_fraction)
    acc.add(f, dc)
    return acc.solve(quantiles)


# --------------------------------------------------------------------------------------------
# global statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FSDAFStatistics:
    """Whole-image quantities shared by all blocks.

    Attributes:
        n_classes: Lc.
        class_change: (Lc, nb) ΔF per class (3.3).
        similarity_threshold: (nb,) th_b (eq. 20).
        noise: noise clamp thresholds, or None when noise_fix is off.
        t2_low, t2_high: (nb,) clamp bounds of eq. (18).
    """

    n_classes: int
    class_change: Array
    similarity_threshold: Array
    noise: NoiseFix | None
    t2_low: Array
    t2_high: Array


@dataclass
class _Labeler:
    """Class labels 1..Lc (0 = invalid) of any rows of the scene, from a class map or k-means centres.

    ``present`` are the raw labels present among valid pixels, ascending (renumbered 1..Lc).
    """

    class_map: Array | None
    centres: Array | None
    present: Array

    @property
    def n_classes(self) -> int:
        return int(self.present.size)

    def __call__(self, fine_t1: Array, valid: Array, rows: slice) -> Array:
        if self.class_map is not None:
            raw = np.asarray(self.class_map[rows])
        elif self.centres is not None:
            raw = classify(fine_t1, valid, self.centres)
        else:
            return np.zeros(valid.shape, np.int32)
        keep = valid & (raw > 0)
        out = np.zeros(valid.shape, np.int32)
        values = raw[keep]
        idx = np.searchsorted(self.present, values)
        idx = np.minimum(idx, max(self.present.size - 1, 0))
        hit = self.present[idx] == values if self.present.size else np.zeros(values.shape, bool)
        out[keep] = np.where(hit, idx + 1, 0).astype(np.int32)
        return out


def _block_inputs(block: Block, valid_mask: Array | None) -> tuple[Array, Array, Array, Array, slice]:
    """(coarse_t1, fine_t1, coarse_t2, valid, scene rows) of a block, as float arrays."""
    pair = block.pairs[0]
    c1, f1, c2 = _as_float(pair.coarse), _as_float(pair.fine), _as_float(block.coarse_t2)
    rows = slice(block.top, block.top + block.rows)
    valid = np.empty(c1.shape[1:], dtype=bool)
    _kernels().all_finite(c1, f1, c2, valid)
    if valid_mask is not None:
        valid &= np.asarray(valid_mask[rows], dtype=bool)
    return c1, f1, c2, valid, rows


def _map_blocks(source: SceneSource, rows: int, compute: Callable[[Block], Any]) -> Iterator[Any]:
    """``compute(block)`` over the scene's row blocks, results in row order.

    With n kernel threads (numba's current count), n blocks are computed at a time in threads, one
    kernel thread each, while the next block is read here; the caller reduces the results in order,
    so sums come out as in one thread. Memory: n + 1 blocks.
    """
    workers = numba.get_num_threads()
    blocks = iter_source_blocks(source, rows)
    if workers <= 1:
        yield from map(compute, blocks)
        return

    def run(block: Block) -> Any:
        with _threads(1):
            return compute(block)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque[Future[Any]] = collections.deque()
        for block in blocks:
            pending.append(pool.submit(run, block))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass
class _PixelStatistics:
    """Scene statistics that do not depend on the scale factor (passes 1-3 of :func:`prepare`)."""

    labeler: _Labeler
    noise: NoiseFix | None
    similarity: Array
    n_valid: int


def _sample_priority(positions: Array, seed: int) -> Array:
    """A fixed pseudo-random priority of each pixel position (splitmix64 of position and seed): the
    k-means sample's top-up takes the valid pixels of lowest priority, whichever other pixels are valid.

    >>> _sample_priority(np.array([0, 1, 2]), 0).dtype
    dtype('uint64')
    """
    with np.errstate(over="ignore"):
        z = positions.astype(np.uint64) + np.uint64(seed + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return np.asarray(z ^ (z >> np.uint64(31)))


def _pixel_statistics(
    source: SceneSource,
    config: FSDAFConfig,
    *,
    class_map: Array | None,
    valid_mask: Array | None,
    rows: int,
) -> _PixelStatistics:
    """Classification, noise clamp and similarity thresholds in passes over row blocks.

    Pass 1 counts valid pixels and accumulates band sums and the first level of the exact
    quantiles; pass 2 takes the k-means sample (``rng.choice`` of :data:`_KMEANS_SAMPLE` positions
    of the whole scene, the valid ones kept: for a scene without invalid pixels the same draw as the
    in-memory reference's over valid pixels by index; topped up to min(:data:`_KMEANS_SAMPLE`, valid
    pixels) by the valid pixels of lowest :func:`_sample_priority`), the squared deviations and the
    second quantile level; pass 3 classifies (classes present) and finds the noise clamp's fill values.
    """
    nb = source.bands
    n_valid = 0
    sums = np.zeros(nb)
    present: set[int] = set()
    dtype: np.dtype[Any] | None = None
    # the passes compute blocks concurrently (_map_blocks) and reduce them here in row order

    def pass_1(block: Block) -> tuple[np.dtype[Any], Array | None, int, Array]:
        _, f1, _, valid, r = _block_inputs(block, valid_mask)
        labels_present = None
        if class_map is not None:
            labels = np.asarray(class_map[r])
            valid = valid & (labels > 0)
            labels_present = np.unique(labels[valid])
        block_sums = f1[:, valid].sum(axis=1, dtype=np.float64)
        return f1.dtype, labels_present, int(valid.sum()), block_sums

    for block_dtype, labels_present, n_valid_block, block_sums in _map_blocks(source, rows, pass_1):
        dtype = block_dtype if dtype is None else np.promote_types(dtype, block_dtype)
        if labels_present is not None:
            present.update(int(v) for v in labels_present)
        n_valid += n_valid_block
        sums += block_sums
    if n_valid == 0 or dtype is None:
        return _PixelStatistics(_Labeler(class_map, None, np.zeros(0, np.int64)), None, np.zeros(nb), 0)
    mean = sums / n_valid
    order = _OrderStatistics([_noise_ranks(n_valid)] * nb, np.dtype(dtype)) if config.noise_fix else None

    def selected(block: Block) -> tuple[Array, Array, slice]:
        _, f1, _, valid, r = _block_inputs(block, valid_mask)
        if class_map is not None:
            valid = valid & (np.asarray(class_map[r]) > 0)
        return f1, valid, r

    # the quantile passes need the count first, so its first level runs with pass 2
    # k-means sample (see _sample_priority): drawn pixel positions of the whole scene, the valid ones kept
    # (a scene without invalid pixels: the same draw as over its valid pixels by index), topped up to
    # min(_KMEANS_SAMPLE, valid pixels) by the valid pixels of lowest priority; a pixel masked elsewhere
    # changes at most one other pixel's part in it
    sample_idx: Array | None = None
    n_positions = source.height * source.width
    if class_map is None and n_positions > _KMEANS_SAMPLE:
        rng = np.random.default_rng(config.seed)
        sample_idx = np.sort(rng.choice(n_positions, _KMEANS_SAMPLE, False))
    m2 = np.zeros(nb)
    samples: list[Array] = []
    spare_keys, spare_values = np.zeros(0, np.uint64), np.zeros((0, nb), dtype)  # top-up candidates
    # pass 2 (+ more quantile passes for float64 data whose bins are crowded)
    first = True

    def pass_2(block: Block) -> tuple[Array, Array | None, list[list[tuple[int, Array]]], Array | None, Any]:
        f1, valid, _ = selected(block)
        values = f1[:, valid]
        deviations = ((values.astype(np.float64) - mean[:, None]) ** 2).sum(axis=1) if first else None
        parts = [order.contributions(b, values[b]) for b in range(nb)] if order is not None else []
        picked, spare = None, None
        if first and class_map is None:
            if sample_idx is None:
                picked = values.T
            else:  # the drawn positions in this block's rows, where valid; the others: spare candidates
                start = block.top * source.width
                lo, hi = np.searchsorted(sample_idx, [start, start + valid.size])
                flat_valid = valid.reshape(-1)
                drawn = sample_idx[lo:hi] - start
                picked = f1.reshape(nb, -1)[:, drawn[flat_valid[drawn]]].T
                undrawn = flat_valid.copy()
                undrawn[drawn] = False
                candidates = np.flatnonzero(undrawn)
                keys = _sample_priority(start + candidates, config.seed)
                if keys.size > _KMEANS_SAMPLE:
                    best = np.argpartition(keys, _KMEANS_SAMPLE - 1)[:_KMEANS_SAMPLE]
                    keys, candidates = keys[best], candidates[best]
                spare = keys, f1.reshape(nb, -1)[:, candidates].T
        return values, deviations, parts, picked, spare

    while first or (order is not None and not order.done):
        for _, deviations, parts, picked, spare in _map_blocks(source, rows, pass_2):
            if deviations is not None:
                m2 += deviations
            if picked is not None:
                samples.append(picked)
            if spare is not None and spare[0].size:
                spare_keys = np.concatenate([spare_keys, spare[0]])
                spare_values = np.concatenate([spare_values, spare[1]])
                if spare_keys.size > _KMEANS_SAMPLE:
                    best = np.argpartition(spare_keys, _KMEANS_SAMPLE - 1)[:_KMEANS_SAMPLE]
                    spare_keys, spare_values = spare_keys[best], spare_values[best]
            if order is not None:
                for part in parts:
                    order.add(part)
        if order is not None:
            order.finish_pass()
        first = False
    if class_map is None:
        need = min(_KMEANS_SAMPLE, n_valid) - sum(part.shape[0] for part in samples)
        if need > 0:  # invalid pixels took drawn positions: the spare pixels of lowest priority
            samples.append(spare_values[np.argsort(spare_keys, kind="stable")[:need]])
        centres = fit_classes(np.concatenate(samples), n_classes=config.n_classes, seed=config.seed)
        labeler = _Labeler(None, centres, np.arange(1, centres.shape[0] + 1))
    else:
        labeler = _Labeler(class_map, None, np.asarray(sorted(present), dtype=np.int64))
    noise = None
    if order is not None:
        bounds = np.asarray(order.values()).reshape(nb, 2)
        low, high = bounds[:, 0], bounds[:, 1]
        fill_low = np.full(nb, np.inf)
        fill_high = np.full(nb, -np.inf)
    classes_seen: set[int] = set()
    # pass 3

    def pass_3(block: Block) -> tuple[Array | None, Array, Array]:
        f1, valid, _ = selected(block)
        hit_classes = None
        if class_map is None:
            raw = classify(f1, valid, labeler.centres)  # type: ignore[arg-type]
            hits = np.bincount(raw[valid], minlength=labeler.centres.shape[0] + 1)  # type: ignore[union-attr]
            hit_classes = np.flatnonzero(hits)
        block_low, block_high = np.full(nb, np.inf), np.full(nb, -np.inf)
        if order is not None:
            _kernels().fill_bounds(
                np.ascontiguousarray(f1), np.ascontiguousarray(valid), low, high,
                float(config.dn_min), float(config.dn_max), block_low, block_high,
            )  # fmt: skip
        return hit_classes, block_low, block_high

    if order is not None or class_map is None:
        for hit_classes, block_low, block_high in _map_blocks(source, rows, pass_3):
            if hit_classes is not None:
                classes_seen.update(int(v) for v in hit_classes)
            if order is not None:  # min and max: the same whatever the blocks' order
                fill_low = np.minimum(fill_low, block_low)
                fill_high = np.maximum(fill_high, block_high)
    if order is not None:
        # nothing left (e.g. a constant band): leave those pixels unchanged
        fill_low[~np.isfinite(fill_low)] = np.nan
        fill_high[~np.isfinite(fill_high)] = np.nan
        noise = NoiseFix(low, high, fill_low, fill_high, float(config.dn_min), float(config.dn_max))
    if class_map is None:
        labeler.present = np.asarray(sorted(classes_seen), dtype=np.int64)
    n_classes = labeler.n_classes
    sd = np.sqrt(m2 / (n_valid - 1)) if n_valid > 1 else np.zeros(nb)
    similarity = 2.0 * sd / max(n_classes, 1) if n_valid > 1 else np.zeros(nb)
    return _PixelStatistics(labeler, noise, similarity, n_valid)


def _cell_statistics(
    source: SceneSource,
    config: FSDAFConfig,
    pixel: _PixelStatistics,
    *,
    valid_mask: Array | None,
) -> FSDAFStatistics:
    """Class changes and t2 clamp bounds in one pass over the rows of FSDAF blocks (3.2-3.3, 18).

    The cell table is built block by block, as the in-memory reference did: its coarse cell means
    are float32 sums when the inputs are float32, and NumPy's summation order depends on the
    region's shape (a one-cell-wide block sums differently), so the regions must be the same.
    """
    s = config.scale_factor
    nb, lc = source.bands, pixel.labeler.n_classes
    step = config.block_size * s
    unmix = _Unmixing(lc, nb, n_pure=config.n_pure, min_fraction=config.min_fraction)
    f1_min = np.full((lc, nb), np.nan)
    f1_max = np.full((lc, nb), np.nan)
    c2_min = np.full(nb, np.nan)
    c2_max = np.full(nb, np.nan)
    columns = range(0, source.width, step)
    # the blocks of a strip are tabulated n_jobs at a time in threads (one kernel thread each)
    workers = min(numba.get_num_threads(), len(columns))

    def tabulate(strip: tuple[Array, Array, Array, Array, Array], top: int, col: int) -> CellTable:
        c1, f1, c2, labels, valid = (a[..., col : col + step] for a in strip)
        with _threads(1) if workers > 1 else contextlib.nullcontext(0):
            fixed = apply_noise_fix(f1, pixel.noise) if pixel.noise is not None else f1
            return cell_table(c1, fixed, c2, labels, valid, scale_factor=s, n_classes=lc, origin=(top, col))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for top in block_row_starts(source.height, config=config):
            block = source.block(top, min(top + step, source.height))
            c1, f1, c2, valid, r = _block_inputs(block, valid_mask)
            labels = pixel.labeler(f1, valid, r)
            valid &= labels > 0
            strip_table = functools.partial(tabulate, (c1, f1, c2, labels, valid), top)
            tables = list(pool.map(strip_table, columns) if workers > 1 else map(strip_table, columns))
            table = merge_cell_tables(tables)  # cells in raster order: the purest-cell tie order
            unmix.add(table.fractions, table.delta_coarse)
            f1_min, f1_max = np.fmin(f1_min, table.f1_class_min), np.fmax(f1_max, table.f1_class_max)
            c2_min, c2_max = np.fmin(c2_min, table.c2_min), np.fmax(c2_max, table.c2_max)
    change = unmix.solve(config.quantiles)
    with np.errstate(invalid="ignore"):
        tp_min = np.fmin.reduce(f1_min + change, axis=0)
        tp_max = np.fmax.reduce(f1_max + change, axis=0)
    low = np.maximum(np.fmin(c2_min, tp_min), config.dn_min)
    high = np.minimum(np.fmax(c2_max, tp_max), config.dn_max)
    return FSDAFStatistics(lc, change, np.asarray(pixel.similarity), pixel.noise, low, high)


# --------------------------------------------------------------------------------------------
# 3.6 thin-plate spline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThinPlateSpline:
    """Exact interpolating TPS (eq. 9) in normalised coordinates u = (row - r0)/L, (col - c0)/L.

    Attributes:
        points: (P, 2) control points (row, col), fine-pixel index coordinates.
        beta: (P, nb) kernel weights; affine: (3, nb) for (1, col, row) in normalised units.
    """

    points: Array
    beta: Array
    affine: Array
    origin: tuple[float, float]
    length: float


def _tps_kernel(r2: Array) -> Array:
    """φ(r) = r² ln r written as ½ r² ln r² (φ(0) = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        k = 0.5 * r2 * np.log(r2)
    k[r2 == 0] = 0.0
    return k


def fit_tps(points: Array, values: Array, *, n_jobs: int | None = None) -> ThinPlateSpline:
    """Fit f_b(y, x) = a0 + a1 x + a2 y + Σ β_i φ(r_i) through (points, values) for all bands.

    Args:
        points: (P, 2) (row, col) fine-pixel coordinates.
        values: (P, nb) values at the control points.
        n_jobs: threads building the system (the solve uses LAPACK's own threads).
    """
    pts = np.ascontiguousarray(points, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    origin = (float(pts[:, 0].mean()), float(pts[:, 1].mean()))
    length = float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 1.0))
    p = pts.shape[0]
    rhs = np.zeros((p + 3, vals.shape[1]))
    rhs[:p] = vals
    factors = _tps_factors(pts, origin, length, n_jobs)
    if isinstance(factors, tuple):
        # solved here rather than by LAPACK: OpenBLAS's threads would spin for a while after each
        # call and take the core of the block running beside this one
        lu, piv = factors
        solution = np.ascontiguousarray(rhs.T)
        _kernels().lu_solve(lu, piv, solution)
        coef = solution.T
    else:  # collinear control points: the affine part is not unique, take the min-norm one
        coef = np.linalg.lstsq(factors, rhs, rcond=None)[0]
    return ThinPlateSpline(pts, coef[:p], coef[p:], origin, length)


#: LU factors of recent TPS systems, by control-point layout: blocks with the same layout (all
#: interior blocks of a clean scene) share one system and differ only in their values.
_TPS_FACTORS: dict[bytes, tuple[Array, Array]] = {}
_TPS_FACTORS_MAX = 4
_TPS_FACTORS_BYTES = 64 << 20
_TPS_LOCK = threading.Lock()


def _tps_factors(
    pts: Array, origin: tuple[float, float], length: float, n_jobs: int | None
) -> tuple[Array, Array] | Array:
    """LU factors (scipy.linalg.lu_factor) of the TPS system, or the system itself when the
    control points are collinear (no unique affine part)."""
    key = hashlib.blake2b(pts.tobytes(), digest_size=16).digest() + pts.shape[0].to_bytes(8, "little")
    with _TPS_LOCK:
        cached = _TPS_FACTORS.get(key)
    if cached is not None:
        return cached
    u = np.ascontiguousarray((pts - np.array(origin)) / length)
    p = u.shape[0]
    system = np.zeros((p + 3, p + 3))
    with _threads(n_jobs):
        _kernels().tps_system(u, system)
    if not (p >= 3 and np.linalg.matrix_rank(system[:p, p:]) == 3):
        return system
    factors = scipy_linalg.lu_factor(system, overwrite_a=True, check_finite=False)
    if system.nbytes <= _TPS_FACTORS_BYTES:
        with _TPS_LOCK:
            if len(_TPS_FACTORS) >= _TPS_FACTORS_MAX:
                del _TPS_FACTORS[next(iter(_TPS_FACTORS))]
            _TPS_FACTORS[key] = factors
    return factors


def evaluate_tps(tps: ThinPlateSpline, rows: Array, cols: Array, *, n_jobs: int | None = None) -> Array:
    """Evaluate on the grid rows x cols (fine-pixel coordinates) by direct summation.

    Returns (nb, len(rows), len(cols)) float64. Cost O(len(rows) · len(cols) · P).
    """
    ur = (np.asarray(rows, dtype=np.float64) - tps.origin[0]) / tps.length
    uc = (np.asarray(cols, dtype=np.float64) - tps.origin[1]) / tps.length
    pr = (tps.points[:, 0] - tps.origin[0]) / tps.length
    pc = (tps.points[:, 1] - tps.origin[1]) / tps.length
    nb = tps.beta.shape[1]
    out = np.zeros((nb, ur.size, uc.size))
    with _threads(n_jobs):
        _kernels().tps_direct(pr, pc, np.ascontiguousarray(tps.beta), ur, uc, out)
    out += (
        tps.affine[0][:, None, None]
        + uc[None, None, :] * tps.affine[1][:, None, None]
        + ur[None, :, None] * tps.affine[2][:, None, None]
    )
    return out


@functools.lru_cache(maxsize=4)
def _phase_kernel_spectra(
    cell: int, fft_shape: tuple[int, int], lags: tuple[int, int], offsets: tuple[float, float], length: float
) -> Array:
    """rfft2 of the TPS kernel between lattice points and the pixels of every phase of a cell.

    Phase (u, v) is the pixel at (u, v) inside an output cell. Entry [u, v, da mod M0, db mod M1]
    is φ at the offset (da·cell + u + offsets[0], db·cell + v + offsets[1]) / length between a
    pixel of output cell a = i + da and the lattice point of cell i, for da in
    [-lags[0], M0 - lags[0]) (same along the columns). Shape (cell, cell, M0, M1 // 2 + 1).
    """
    m0, m1 = fft_shape
    da = np.arange(-lags[0], m0 - lags[0])
    db = np.arange(-lags[1], m1 - lags[1])
    phase = np.arange(cell, dtype=np.float64)
    dy2 = ((da[None, :] * cell + phase[:, None] + offsets[0]) / length) ** 2  # (u, da)
    dx2 = ((db[None, :] * cell + phase[:, None] + offsets[1]) / length) ** 2  # (v, db)
    grid = _tps_kernel(dy2[:, None, :, None] + dx2[None, :, None, :])  # (u, v, da, db)
    grid = np.roll(grid, (-lags[0], -lags[1]), axis=(2, 3))  # lag da at index da mod M0
    return np.asarray(sp_fft.rfft2(grid, axes=(2, 3)))


def _evaluate_tps_cells(
    tps: ThinPlateSpline, rows: tuple[int, int], cols: tuple[int, int], cell: int, *, n_jobs: int | None
) -> Array:
    """TPS on the integer pixel grid [rows) x [cols) (same values as :func:`evaluate_tps`).

    Control points at cell centres (i·cell + (cell-1)/2, j·cell + (cell-1)/2) form a lattice:
    for each pixel phase (u, v) inside a cell their sum is a 2D convolution of their weights with
    the kernel sampled every ``cell`` pixels, done by FFT (O(N log N) instead of O(N·P)). Other
    control points (centroids of partial cells at the image edge) are summed directly.
    Returns (nb, rows, cols) float64.
    """
    (r0, r1), (c0, c1) = rows, cols
    ny, nx = r1 - r0, c1 - c0
    s = cell
    centre = (s - 1) / 2
    nb = tps.beta.shape[1]
    gi = (tps.points[:, 0] - centre) / s
    gj = (tps.points[:, 1] - centre) / s
    on = (gi == np.round(gi)) & (gj == np.round(gj)) & (gi >= 0) & (gj >= 0)
    out = np.zeros((nb, ny, nx))
    if on.sum() >= _FFT_MIN_POINTS:
        ci, cj = np.round(gi[on]).astype(np.intp), np.round(gj[on]).astype(np.intp)
        i0, j0 = int(ci.min()), int(cj.min())
        ni, nj = int(ci.max()) - i0 + 1, int(cj.max()) - j0 + 1
        na, nc = -(-ny // s), -(-nx // s)  # output cells
        # pixel (r0 + a·s + u) minus lattice row (i0 + i)·s + centre = (a - i)·s + u + offset
        offsets = (float(r0 - i0 * s - centre), float(c0 - j0 * s - centre))
        m0 = sp_fft.next_fast_len(na + ni - 1, real=True)
        m1 = sp_fft.next_fast_len(nc + nj - 1, real=True)
        spectra = _phase_kernel_spectra(s, (m0, m1), (ni - 1, nj - 1), offsets, tps.length)
        weights = np.zeros((nb, m0, m1))
        weights[:, ci - i0, cj - j0] = tps.beta[on].T
        cells = np.empty((nb, na, s, nc, s))
        with _threads(n_jobs) as workers:
            wf = sp_fft.rfft2(weights, workers=workers)  # (nb, m0, m1h)
            for u in range(s):
                prod = wf[:, None] * spectra[u][None]  # (nb, v, m0, m1h)
                # only the first na rows of each phase are needed: inverse along rows, cut, then columns
                part = sp_fft.ifft(prod, axis=2, workers=workers)[:, :, :na]
                conv = sp_fft.irfft(part, n=m1, axis=3, workers=workers)[..., :nc]  # (nb, v, na, nc)
                cells[:, :, u, :, :] = conv.transpose(0, 2, 3, 1)
        out += cells.reshape(nb, na * s, nc * s)[:, :ny, :nx]
        rest = ~on
    else:
        rest = np.ones(on.shape, bool)
    ur = (np.arange(r0, r1, dtype=np.float64) - tps.origin[0]) / tps.length
    uc = (np.arange(c0, c1, dtype=np.float64) - tps.origin[1]) / tps.length
    if rest.any():
        pr = (tps.points[rest, 0] - tps.origin[0]) / tps.length
        pc = (tps.points[rest, 1] - tps.origin[1]) / tps.length
        with _threads(n_jobs):
            _kernels().tps_direct(pr, pc, np.ascontiguousarray(tps.beta[rest]), ur, uc, out)
    out += (
        tps.affine[0][:, None, None]
        + uc[None, None, :] * tps.affine[1][:, None, None]
        + ur[None, :, None] * tps.affine[2][:, None, None]
    )
    return out


# --------------------------------------------------------------------------------------------
# 3.7 homogeneity, 3.8 residual distribution
# --------------------------------------------------------------------------------------------


def homogeneity_index(class_map: Array, half_window: int) -> Array:
    """HI(p) = share of the clipped window around p with the class of p (eq. 11).

    Args:
        class_map: (H, W) labels 1..Lc, 0 = invalid.
        half_window: window half size (fine pixels).
    Returns:
        (H, W) float64 in (0, 1]; NaN where class_map is 0.
    """
    labels = np.ascontiguousarray(class_map, dtype=np.int64)
    out = np.empty(labels.shape)
    _kernels().homogeneity(labels, max(int(labels.max(initial=0)), 0), int(half_window), out)
    return out


def distribute_residual(
    temporal: Array,
    spatial: Array,
    residual: Array,
    homogeneity: Array,
    valid: Array,
    *,
    scale_factor: int,
    sign_rule: bool,
    eps_cw: float,
) -> Array:
    """Residual share r(p, b) of every valid fine pixel (spec 3.8, eqs. 12-16).

    Args:
        temporal: (nb, h, w) F_TP; spatial: (nb, h, w) F_SP.
        residual: (nb, nr, nc) R(i, b) per cell (cells aligned with pixel (0, 0)).
        homogeneity: (h, w) HI; valid: (h, w) bool.
        sign_rule: reference rule (13) and clamp of weights > 10 ("fsdaf_idl"); False = paper.
        eps_cw: added to every weight.
    Returns:
        (nb, h, w) r; 0 at invalid pixels. Per cell mean_{valid} r = R (conservation).
    """
    out = np.empty(np.shape(temporal), dtype=np.float64)
    _kernels().residual_share(
        np.ascontiguousarray(temporal, dtype=np.float64),
        np.ascontiguousarray(spatial, dtype=np.float64),
        np.ascontiguousarray(residual, dtype=np.float64),
        np.ascontiguousarray(homogeneity, dtype=np.float64),
        np.ascontiguousarray(valid, dtype=bool),
        int(scale_factor),
        bool(sign_rule),
        float(eps_cw),
        out,
    )
    return out


# --------------------------------------------------------------------------------------------
# 3.10 final neighbourhood step
# --------------------------------------------------------------------------------------------


@functools.cache
def _offset_tables(half: int) -> tuple[Array, Array, Array, Array]:
    """Window offsets by rank: (dy, dx, d, 10 + d/w), each (n_offsets,).

    The rank orders offsets by distance, then raster order (dy, dx): ties of the selection key
    go to the lower rank, as in the reference's packed (key, offset) sort. Rank 0 is the target.
    """
    dy, dx = np.mgrid[-half : half + 1, -half : half + 1]
    dy, dx = dy.ravel(), dx.ravel()
    d = np.sqrt(dy**2 + dx**2)
    order = np.lexsort((dx, dy, d))
    d = d[order]
    return dy[order].astype(np.int64), dx[order].astype(np.int64), d, 10.0 + d / half


def similar_pixel_prediction(
    fine_t1: Array,
    total_change: Array,
    *,
    window: int,
    n_similar: int,
    rule: SimilarRule = "threshold",
    weighting: FinalWeighting = "idl",
    threshold: Array | None = None,
    class_map: Array | None = None,
    targets: tuple[slice, slice] | None = None,
    n_jobs: int | None = None,
) -> Array:
    """Final prediction F1 + Σ W_q ΔF_tot(q) over similar pixels (spec 3.10, eqs. 20-25).

    The selection key is computed in ``fine_t1``'s precision (float32 or float64) and rounded to
    float32 as in the reference; ties go to the nearer offset, then raster order.

    Args:
        fine_t1: (nb, h, w) original F1, NaN = invalid (never a candidate, NaN output).
        total_change: (nb, h, w) ΔF_tot.
        window: w (half window); n_similar: n.
        rule: "threshold" (needs ``threshold``, (nb,) th_b) or "class" (needs ``class_map``).
        weighting: "idl" or "paper" (eq. 23).
        targets: region to predict (default: everything); candidates come from the whole array.
        n_jobs: threads (default: numba's thread count).
    Returns:
        (nb, th, tw) float64 prediction for the target region (no range repair).

    Memory beyond the inputs: pixel-major copies of F1 and ΔF_tot (12 bytes per band, bands
    padded to a multiple of 4, per pixel of the array) and the selection (4 bytes per similar
    pixel per target).
    """
    f1 = np.ascontiguousarray(_as_float(fine_t1))
    nb, h, wd = f1.shape
    if rule == "threshold" and threshold is None:
        raise ValueError("rule 'threshold' needs threshold=(nb,) th_b")
    if rule == "class" and class_map is None:
        raise ValueError("rule 'class' needs class_map")
    rs, cs = targets if targets is not None else (slice(0, h), slice(0, wd))
    off_dy, off_dx, off_d, factor = _offset_tables(window)
    dtype = f1.dtype.type
    # the class rule has no threshold: +inf passes every valid candidate (NaN fails it)
    th = np.asarray(threshold if rule == "threshold" else np.full(nb, np.inf), dtype=f1.dtype)
    if rule == "class":
        assert class_map is not None
        labels = np.where(np.isfinite(f1).all(axis=0), class_map, 0).astype(np.int32)
    else:
        labels = np.zeros((1, 1), np.int32)
    n_rows, n_cols = rs.stop - rs.start, cs.stop - cs.start  # targets
    out = np.empty((nb, n_rows, n_cols))
    # the selected pixels of a target are scattered over its window: their bands are read from
    # pixel-major copies (bands padded to a multiple of 4 lanes), one or two cache lines each
    nbp = -(-nb // 4) * 4
    f1p = np.empty(h * wd * nbp, f1.dtype)
    chp = np.empty(h * wd * nbp)
    selected = np.empty((n_rows, n_cols, n_similar), np.int32)  # offset ranks, best first
    count = np.empty((n_rows, n_cols), np.int32)  # selected per target, -1: invalid target
    kernels = _kernels()
    with _threads(n_jobs):
        kernels.pixel_major(f1, np.ascontiguousarray(total_change, dtype=np.float64), nbp, f1p, chp)
        kernels.similar(
            f1, f1p, chp, nbp, labels, off_dy, off_dx, off_dy * wd + off_dx, 1.0 / (1.0 + off_d / window),
            factor, th, dtype(1.0), dtype(1e-5), np.float32(1e-4 if rule == "threshold" else 0.0),
            dtype(1e-8), dtype(np.inf), rs.start, rs.stop, cs.start, cs.stop, n_similar,
            rule == "threshold", weighting == "idl", selected, count, out,
        )  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# one block
# --------------------------------------------------------------------------------------------


@dataclass
class BlockResult:
    """Prediction of a block core, (nb, h, w) float32, and optional diagnostics for the core."""

    prediction: Array
    diagnostics: dict[str, Array] = field(default_factory=dict)


@dataclass
class BlockChange:
    """Steps 3.4-3.9 of one read window: what the final step (3.10) needs.

    Attributes:
        fine_t1: (nb, eh, ew) F1 of the evaluation area (the core plus ⌈w/s⌉ cells), NaN = invalid.
        total_change: (nb, eh, ew) ΔF_tot (19) on the evaluation area, NaN = invalid.
        class_map: (eh, ew) labels of the evaluation area.
        targets: the core inside the evaluation area.
        diagnostics: intermediate results for the core (when asked for).
    """

    fine_t1: Array
    total_change: Array
    class_map: Array
    targets: tuple[slice, slice]
    diagnostics: dict[str, Array] = field(default_factory=dict)


def block_change(
    coarse_t1: Array,
    fine_t1: Array,
    coarse_t2: Array,
    class_map: Array,
    valid: Array,
    *,
    statistics: FSDAFStatistics,
    config: FSDAFConfig,
    core: tuple[slice, slice] | None = None,
    return_diagnostics: bool = False,
) -> BlockChange:
    """Steps 3.4-3.9 for one read window (spec); exact for ``core`` given enough margin.

    Then :func:`block_prediction` gives the core's prediction.

    Args:
        coarse_t1, fine_t1, coarse_t2: (nb, h, w) reflectance of the read window. The window
            must start on a coarse-cell boundary of the image; its edges must be the image
            edges or lie at least ``block_margin_cells(config)`` cells beyond the core.
        class_map: (h, w) labels 1..Lc (global numbering), 0 = invalid.
        valid: (h, w) bool (already including class_map > 0).
        statistics: global quantities (:func:`scene_statistics`).
        core: region to predict (default: everything).
        return_diagnostics: keep the intermediate results of the core.
    """
    s = config.scale_factor
    nb, h, w = fine_t1.shape
    rs, cs = core if core is not None else (slice(0, h), slice(0, w))
    # evaluation area: the core plus ⌈w/s⌉ cells (whole cells, clipped to the window)
    ext = math.ceil(config.window / s) * s
    e_r0 = max((rs.start // s) * s - ext, 0)
    e_c0 = max((cs.start // s) * s - ext, 0)
    e_r1 = min(rs.stop + ext, h)
    e_c1 = min(cs.stop + ext, w)
    # (7) F1' and the temporal prediction, (1)-(3) and (8) cell means over valid pixels
    noise = statistics.noise
    table = (
        np.array([noise.low, noise.high, noise.fill_low, noise.fill_high], dtype=np.float64)
        if noise is not None
        else np.zeros((4, nb))
    )
    change = np.vstack([np.zeros((1, nb)), statistics.class_change])  # row 0: unclassified
    f1_fixed = np.empty((nb, h, w))
    temporal = np.empty((nb, h, w))
    labels = np.ascontiguousarray(class_map, dtype=np.int64)
    kernels = _kernels()
    with _threads(config.n_jobs):
        kernels.temporal_prediction(
            np.ascontiguousarray(fine_t1), table, noise is not None,
            float(config.dn_min), float(config.dn_max), labels, change, f1_fixed, temporal,
        )  # fmt: skip
        nr, nc = -(-h // s), -(-w // s)
        count = np.empty((nr, nc), np.int64)
        means = np.empty((4, nb, nr, nc))
        kernels.cell_means(
            np.ascontiguousarray(coarse_t1), np.ascontiguousarray(coarse_t2), f1_fixed, temporal,
            np.ascontiguousarray(valid, dtype=bool), s, count, means,
        )  # fmt: skip
    c1_cell, c2_cell, f1_cell, tp_cell = means
    residual = (c2_cell - c1_cell) - (tp_cell - f1_cell)  # (8)
    # (9)-(10) TPS through the cell means of C2 at the cell centroids (whole window)
    starts_r, starts_c = np.arange(nr) * s, np.arange(nc) * s
    cy = np.broadcast_to(((starts_r + np.minimum(starts_r + s, h) - 1) / 2)[:, None], (nr, nc))
    cx = np.broadcast_to(((starts_c + np.minimum(starts_c + s, w) - 1) / 2)[None, :], (nr, nc))
    control = count > 0
    e_sl = (slice(e_r0, e_r1), slice(e_c0, e_c1))
    if control.any():
        tps = fit_tps(
            np.column_stack([cy[control], cx[control]]), c2_cell[:, control].T, n_jobs=config.n_jobs
        )
        spatial = _evaluate_tps_cells(tps, (e_r0, e_r1), (e_c0, e_c1), s, n_jobs=config.n_jobs)
    else:
        spatial = np.full((nb, e_r1 - e_r0, e_c1 - e_c0), np.nan)
    # HI over the whole window (exact inside the evaluation area given the margin)
    homog = homogeneity_index(class_map, config.hi_half_window)[e_sl]
    cell_sl = (slice(e_r0 // s, -(-e_r1 // s)), slice(e_c0 // s, -(-e_c1 // s)))
    v_e = valid[e_sl]
    share = distribute_residual(
        temporal[(slice(None), *e_sl)],
        spatial,
        residual[(slice(None), *cell_sl)],
        np.where(v_e, homog, 0.0),
        v_e,
        scale_factor=s,
        sign_rule=config.sign_rule,
        eps_cw=config.eps_cw,
    )
    total = np.empty_like(share)  # (17)-(19)
    with _threads(config.n_jobs):
        kernels.total_change(
            temporal, share, f1_fixed, np.ascontiguousarray(v_e), e_r0, e_c0, config.clamp_t2,
            np.asarray(statistics.t2_low, np.float64), np.asarray(statistics.t2_high, np.float64), total,
        )  # fmt: skip
    # 3.10 runs on the original F1
    f1_e = fine_t1[(slice(None), *e_sl)]
    f1_nan = np.where(v_e, f1_e, np.nan).astype(f1_e.dtype, copy=False)
    if not np.issubdtype(f1_nan.dtype, np.floating):
        f1_nan = f1_nan.astype(np.float32)
    t_core = (slice(rs.start - e_r0, rs.stop - e_r0), slice(cs.start - e_c0, cs.stop - e_c0))
    result = BlockChange(f1_nan, total, class_map[e_sl], t_core)
    if return_diagnostics:
        sub = (slice(None), *t_core)
        core_sl = (slice(None), rs, cs)
        result.diagnostics = {
            "temporal": temporal[core_sl],
            "spatial": spatial[sub],
            "residual": np.where(valid[rs, cs], _cell_expand(residual, s, (h, w))[core_sl], np.nan),
            "residual_share": share[sub],
            "homogeneity": np.where(valid[rs, cs], homog[t_core], np.nan),
            "total_change": total[sub],
        }
    return result


def block_prediction(
    change: BlockChange,
    coarse_t1: Array,
    coarse_t2: Array,
    *,
    statistics: FSDAFStatistics,
    config: FSDAFConfig,
) -> BlockResult:
    """Step 3.10 (and the range repair) for the core of :func:`block_change`'s window.

    Args:
        change: the window's :class:`BlockChange`.
        coarse_t1, coarse_t2: (nb, core h, core w) coarse images of the core (range repair).
    """
    rs, cs = change.targets
    pred = similar_pixel_prediction(
        change.fine_t1,
        change.total_change,
        window=config.window,
        n_similar=config.n_similar,
        rule=config.similar_rule,
        weighting=config.final_weighting,
        threshold=statistics.similarity_threshold,
        class_map=change.class_map,
        targets=change.targets,
        n_jobs=config.n_jobs,
    )
    if config.range_repair:  # F1 + C2 - C1 (float64), clipped, where out of range (NaN is not)
        with np.errstate(invalid="ignore"):
            bad = np.nonzero((pred < config.dn_min) | (pred > config.dn_max))
        if bad[0].size:
            f1c = change.fine_t1[:, rs, cs][bad].astype(np.float64)
            c1c, c2c = (np.asarray(a)[bad].astype(np.float64) for a in (coarse_t1, coarse_t2))
            pred[bad] = np.clip(f1c + c2c - c1c, config.dn_min, config.dn_max)
    return BlockResult(pred.astype(np.float32), change.diagnostics)


# --------------------------------------------------------------------------------------------
# the scene: statistics, prediction strips
# --------------------------------------------------------------------------------------------


@dataclass
class _SceneModel:
    """FSDAF prepared on one scene: configuration, statistics and labeller (None: nothing valid)."""

    config: FSDAFConfig | None
    statistics: FSDAFStatistics | None
    labeler: _Labeler
    valid_mask: Array | None
    bands: int

    def row_starts(self, height: int, width: int) -> list[int]:
        if self.config is None:
            return list(range(0, height, 256))
        return block_row_starts(height, config=self.config)

    def predict_strip(
        self,
        block: Block,
        halo_top: int,
        halo_bottom: int,
        diagnostics: dict[str, Array] | None = None,
    ) -> Array:
        """Predict a strip of blocks (read with its margin rows): (C, rows - halos, W) float32."""
        with _threads(self.config.n_jobs if self.config is not None else None):
            return self._predict_strip(block, halo_top, halo_bottom, diagnostics)

    def _predict_strip(
        self, block: Block, halo_top: int, halo_bottom: int, diagnostics: dict[str, Array] | None
    ) -> Array:
        c1, f1, c2, valid, rows = _block_inputs(block, self.valid_mask)
        nb, h, w = f1.shape
        out = np.full((nb, h - halo_top - halo_bottom, w), np.nan, dtype=np.float32)
        config, stats = self.config, self.statistics
        if config is None or stats is None:
            return out
        labels = self.labeler(f1, valid, rows)
        valid &= labels > 0
        if not valid[halo_top : h - halo_bottom].any() and diagnostics is None:
            return out
        s = config.scale_factor
        step = config.block_size * s
        margin = block_margin_cells(config) * s
        core_rows = slice(halo_top, h - halo_bottom)
        columns = list(range(0, w, step))
        # steps 3.4-3.9 of the blocks run concurrently, one thread each (their NumPy and LAPACK
        # parts are serial); then the final step of each block uses every thread, row-parallel,
        # which balances the load whatever the blocks' widths
        workers = min(numba.get_num_threads(), len(columns)) if _CONCURRENT_BLOCKS else 1
        block_config = replace(config, n_jobs=1) if workers > 1 else config

        def window(col: int) -> tuple[slice, slice]:  # (read columns, core columns)
            stop = min(col + step, w)
            return slice(max(col - margin, 0), min(stop + margin, w)), slice(col, stop)

        def change(col: int) -> BlockChange:
            read, cols = window(col)
            with _threads(1) if workers > 1 else contextlib.nullcontext(0):
                return block_change(
                    c1[:, :, read], f1[:, :, read], c2[:, :, read], labels[:, read], valid[:, read],
                    statistics=stats, config=block_config,
                    core=(core_rows, slice(cols.start - read.start, cols.stop - read.start)),
                    return_diagnostics=diagnostics is not None,
                )  # fmt: skip

        top = block.top + halo_top  # scene row of the strip's first output row
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # `workers` blocks at a time: memory holds that many blocks' changes, not a strip's
            for first in range(0, len(columns), workers):
                group = columns[first : first + workers]
                changes = list(pool.map(change, group)) if workers > 1 else [change(group[0])]
                for col, block_delta in zip(group, changes, strict=True):
                    _, cols = window(col)
                    res = block_prediction(
                        block_delta, c1[:, core_rows, cols], c2[:, core_rows, cols],
                        statistics=stats, config=config,
                    )  # fmt: skip
                    out[:, :, cols] = res.prediction
                    if diagnostics is not None:
                        for name, value in res.diagnostics.items():
                            diagnostics[name][(..., slice(top, top + out.shape[1]), cols)] = value
        return out


def _check_maps(
    source: SceneSource, class_map: Array | None, valid_mask: Array | None
) -> tuple[Array | None, Array | None]:
    shape = (source.height, source.width)
    if valid_mask is not None and np.shape(valid_mask) != shape:
        raise ValueError(f"valid_mask must have shape {shape} (H, W), got {np.shape(valid_mask)}")
    if class_map is not None:
        if np.shape(class_map) != shape:
            raise ValueError(f"class_map must have shape {shape} (H, W), got {np.shape(class_map)}")
        if not np.issubdtype(np.asarray(class_map[:1]).dtype, np.integer):
            raise ValueError(f"class_map must be integer labels, got dtype {np.asarray(class_map[:1]).dtype}")
    return class_map, valid_mask


def _estimate_from_source(source: SceneSource) -> int:
    """:func:`estimate_scale_factor` on up to ``_ESTIMATE_ROWS`` rows around the scene's middle."""
    rows = min(source.height, _ESTIMATE_ROWS)
    top = (source.height - rows) // 2
    block = source.block(top, top + rows)
    return estimate_scale_factor(_as_float(block.pairs[0].coarse))


def _resolve_config(
    scale_factor: int | None,
    preset: str,
    config: FSDAFConfig | None,
    options: dict[str, Any],
) -> tuple[FSDAFConfig, bool]:
    """(configuration, whether s still has to be estimated); validates every option first."""
    if config is not None:
        if options or preset != "fsdaf_idl":
            raise ValueError("pass either config= or preset/options, not both")
        config.validate()
        if scale_factor is not None and scale_factor != config.scale_factor:
            config = replace(config, scale_factor=scale_factor)
            config.validate()
        return config, False
    if scale_factor is None:
        # validate the other options now, so that a bad option fails before any pass
        return FSDAFConfig.from_preset(preset, scale_factor=1, **options), True
    return FSDAFConfig.from_preset(preset, scale_factor=scale_factor, **options), False


def _scene_model(
    source: SceneSource,
    *,
    scale_factor: int | None,
    preset: str,
    class_map: Array | None,
    valid_mask: Array | None,
    config: FSDAFConfig | None,
    options: dict[str, Any],
) -> _SceneModel:
    if source.n_pairs != 1:
        raise ValueError(f"FSDAF uses one reference pair (fine and coarse at t1), got {source.n_pairs}")
    resolved, estimate = _resolve_config(scale_factor, preset, config, options)
    class_map, valid_mask = _check_maps(source, class_map, valid_mask)
    if not estimate:
        _check_tps_size(source.height, source.width, resolved)
    with _threads(resolved.n_jobs):
        pixel = _pixel_statistics(
            source, resolved, class_map=class_map, valid_mask=valid_mask, rows=_STAT_ROWS
        )
        if pixel.n_valid == 0 or pixel.labeler.n_classes == 0:
            return _SceneModel(None, None, pixel.labeler, valid_mask, source.bands)
        if estimate:
            s = _estimate_from_source(source)
            log.info("FSDAF: scale factor %d estimated from the coarse image (%s)", s, _SET_SCALE)
            resolved = FSDAFConfig.from_preset(preset, scale_factor=s, **options)
            _check_tps_size(source.height, source.width, resolved)
        stats = _cell_statistics(source, resolved, pixel, valid_mask=valid_mask)
    return _SceneModel(resolved, stats, pixel.labeler, valid_mask, source.bands)


def scene_statistics(
    source: SceneSource,
    *,
    config: FSDAFConfig,
    class_map: Array | None = None,
    valid_mask: Array | None = None,
) -> FSDAFStatistics | None:
    """FSDAF's scene-wide statistics (ΔF per class, thresholds, clamps) by passes over row blocks.

    Args:
        source: the scene (one reference pair).
        config: resolved configuration (its scale factor is used).
        class_map, valid_mask: optional (H, W) arrays (may be memory-mapped).
    Returns:
        The statistics, or None when no pixel is valid.
    """
    model = _scene_model(
        source, scale_factor=None, preset="fsdaf_idl", class_map=class_map, valid_mask=valid_mask,
        config=config, options={},
    )  # fmt: skip
    return model.statistics


class _PaddedSource(SourceView):
    """A scene seen with ``rows`` NaN rows above it and ``cols`` NaN columns left of it (a SceneSource),
    so that FSDAF's cells, squares from pixel (0, 0), fall on the coarse pixels."""

    def __init__(self, source: SceneSource, rows: int, cols: int) -> None:
        super().__init__(source)
        self.rows, self.cols = rows, cols

    @property
    def height(self) -> int:
        return self.source.height + self.rows

    @property
    def width(self) -> int:
        return self.source.width + self.cols

    @property
    def coarse_ratio(self) -> float | None:
        return getattr(self.source, "coarse_ratio", None)

    def block(self, top: int, stop: int) -> Block:
        return self.read_window(Window(top, 0, stop - top, self.width))

    def read_window(self, window: Window) -> Block:
        inner = self.source.read_window(
            Window(window.row - self.rows, window.col - self.cols, window.height, window.width)
        )
        return replace(inner, top=window.row)


@dataclass(frozen=True)
class _ShiftedPrediction:
    """FSDAF prepared on a :class:`_PaddedSource`, predicting the rows of the scene itself."""

    inner: RowBlocks
    rows: int
    cols: int

    def row_starts(self, height: int, width: int) -> list[int]:
        starts = self.inner.row_starts(height + self.rows, width + self.cols)
        return sorted({max(0, start - self.rows) for start in starts})

    def iter_rows(self, source: SceneSource, first: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        padded = _PaddedSource(source, self.rows, self.cols)
        starts = self.inner.row_starts(padded.height, padded.width)
        begin = max(s for s in starts if s <= first + self.rows)  # whole strips, as predicted alone
        for row, values in self.inner.iter_rows(padded, begin, stop + self.rows):
            lo = max(row, first + self.rows)
            hi = row + values.shape[1]
            if lo < hi:
                yield lo - self.rows, values[:, lo - row :, self.cols :]


def _pad_map(values: Array | None, rows: int, cols: int, fill: Any) -> Array | None:
    if values is None:
        return None
    return np.pad(np.asarray(values), ((rows, 0), (cols, 0)), constant_values=fill)


def _cell_alignment(source: SceneSource, scale_factor: int) -> tuple[int, int]:
    """NaN rows and columns to add above and left of the scene so that its cells start on coarse
    pixels (:func:`estimate_cell_offset` on the middle rows' coarse image at t1)."""
    rows = min(source.height, _ESTIMATE_ROWS)
    top = (source.height - rows) // 2
    block = source.block(top, top + rows)
    row_offset, col_offset = estimate_cell_offset(_as_float(block.pairs[0].coarse), scale_factor)
    row_offset = (top + row_offset) % scale_factor  # in scene rows
    if (row_offset, col_offset) != (0, 0):
        log.info(
            "FSDAF: coarse pixels start at row %d, column %d: cells aligned on them", row_offset, col_offset
        )
    return (scale_factor - row_offset) % scale_factor, (scale_factor - col_offset) % scale_factor


def prepare(
    source: SceneSource,
    *,
    scale_factor: int | None = None,
    preset: str = "fsdaf_idl",
    class_map: Array | None = None,
    valid_mask: Array | None = None,
    config: FSDAFConfig | None = None,
    **options: Any,
) -> Prediction:
    """FSDAF prepared on a scene: global statistics now, predictions strip by strip later.

    Reads the source in row blocks (five passes, see the module docstring; float64 data may need
    one or two more), memory bounded by a block. The statistics equal the in-memory ones exactly
    (exact quantiles, the same k-means sample, the same cell table). The returned
    :class:`~stfusion.blocks.Prediction` predicts strips of FSDAF blocks: full-width rows of
    ``block_size`` coarse cells, read with ``block_margin_cells`` cells of margin above and below
    (``RowBlocks.halo``), starting at :func:`block_row_starts`; a strip predicts its blocks left
    to right. Predict whole strips (ranges between row starts): a strip cut short fits its TPS on
    fewer rows. FSDAF's coarse cells are s x s squares from pixel (0, 0); when the coarse image is
    block-replicated and its pixels start elsewhere (a scene cut anywhere from a larger one:
    :func:`estimate_cell_offset`), the scene is predicted as if padded with NaN above and left of it
    so that the cells fall on the coarse pixels.

    Args:
        source: the scene; ``source.n_pairs`` must be 1 (fine and coarse at t1).
        scale_factor: s; None = the source's ``coarse_ratio`` when it knows it (native coarse images,
            ``--coarse-ratio``), else :func:`estimate_scale_factor` on the coarse image at t1.
        preset: "fsdaf_idl" (default) or "zhu2016".
        class_map: optional (H, W) integer classification of F1 (<= 0 = unclassified); else
            k-means (``n_classes``, ``seed``).
        valid_mask: optional (H, W) bool, True = valid.
        config: a complete :class:`FSDAFConfig` instead of preset/options.
        **options: any option of :data:`OPTION_HELP`; None = preset value.
    Raises:
        ValueError: bad option (naming it, its value and what is allowed), more than one
            reference pair, or a scale factor that cannot be estimated.
    """
    known_ratio = getattr(source, "coarse_ratio", None)
    if scale_factor is None and config is None and known_ratio:
        # the true ratio of a native-resolution coarse image (or the user's --coarse-ratio) beats an estimate
        scale_factor = max(1, round(float(known_ratio)))
    _check_maps(source, class_map, valid_mask)  # on the scene's own shape, before any padding
    scale_factor, rows, cols = _alignment(source, scale_factor, preset, config, options)
    padded: SceneSource = _PaddedSource(source, rows, cols) if rows or cols else source
    model = _scene_model(
        padded, scale_factor=scale_factor, preset=preset, class_map=_pad_map(class_map, rows, cols, 0),
        valid_mask=_pad_map(valid_mask, rows, cols, False), config=config, options=options,
    )  # fmt: skip
    halo = block_margin_cells(model.config) * model.config.scale_factor if model.config is not None else 0
    strips = RowBlocks(model.predict_strip, halo=halo, starts=model.row_starts)
    return _ShiftedPrediction(strips, rows, cols) if rows or cols else strips


def _alignment(
    source: SceneSource,
    scale_factor: int | None,
    preset: str,
    config: FSDAFConfig | None,
    options: dict[str, Any],
) -> tuple[int | None, int, int]:
    """(scale factor, rows, columns to pad above and left so that cells fall on coarse pixels).

    An unknown scale factor is estimated here (:func:`estimate_scale_factor`); when it cannot be
    (e.g. no valid pixel), it stays None and nothing is padded: :func:`_scene_model` says why.
    """
    resolved, estimate = _resolve_config(scale_factor, preset, config, options)  # bad options fail first
    s = resolved.scale_factor
    if estimate:
        try:
            s = _estimate_from_source(source)
        except ValueError:
            return None, 0, 0
        log.info("FSDAF: scale factor %d estimated from the coarse image (%s)", s, _SET_SCALE)
        scale_factor = s
    if s < 2:
        return scale_factor, 0, 0
    rows, cols = _cell_alignment(source, s)
    return scale_factor, rows, cols


# --------------------------------------------------------------------------------------------
# in-memory entry point
# --------------------------------------------------------------------------------------------


@dataclass
class FSDAFDiagnostics:
    """Intermediate results (spec section 1), full image unless stated.

    Attributes:
        class_map: (H, W) int32 classes 1..Lc used (0 = invalid).
        class_change: (Lc, nb) ΔF per class.
        similarity_threshold: (nb,) th_b.
        temporal: (nb, H, W) F_TP; spatial: (nb, H, W) F_SP (the TPS of each pixel's block).
        residual: (nb, H, W) coarse residual R(i, b) broadcast to the cell's pixels.
        residual_share: (nb, H, W) r(p, b) distributed to each pixel.
        homogeneity: (H, W) HI; total_change: (nb, H, W) ΔF_tot.
        statistics: the global statistics object.
        config: the configuration used (with the scale factor used).
    """

    class_map: Array
    class_change: Array
    similarity_threshold: Array
    temporal: Array
    spatial: Array
    residual: Array
    residual_share: Array
    homogeneity: Array
    total_change: Array
    statistics: FSDAFStatistics
    config: FSDAFConfig


@overload
def fsdaf(
    coarse_t1: Array,
    fine_t1: Array,
    coarse_t2: Array,
    *,
    scale_factor: int | None = ...,
    preset: str = ...,
    class_map: Array | None = ...,
    valid_mask: Array | None = ...,
    return_diagnostics: Literal[False] = ...,
    config: FSDAFConfig | None = ...,
    **options: Any,
) -> Array: ...


@overload
def fsdaf(
    coarse_t1: Array,
    fine_t1: Array,
    coarse_t2: Array,
    *,
    scale_factor: int | None = ...,
    preset: str = ...,
    class_map: Array | None = ...,
    valid_mask: Array | None = ...,
    return_diagnostics: Literal[True],
    config: FSDAFConfig | None = ...,
    **options: Any,
) -> tuple[Array, FSDAFDiagnostics]: ...


def fsdaf(
    coarse_t1: Array,
    fine_t1: Array,
    coarse_t2: Array,
    *,
    scale_factor: int | None = None,
    preset: str = "fsdaf_idl",
    class_map: Array | None = None,
    valid_mask: Array | None = None,
    return_diagnostics: bool = False,
    config: FSDAFConfig | None = None,
    **options: Any,
) -> Array | tuple[Array, FSDAFDiagnostics]:
    """Predict the fine image at t2 with FSDAF (fusion interface, see stfusion.fusion).

    Same computation as :func:`prepare` on an :class:`~stfusion.blocks.ArraySource`.

    Args:
        coarse_t1, fine_t1, coarse_t2: (C, H, W) float reflectance (0..1) on the fine grid;
            coarse images resampled by block replication or smoothly. NaN = invalid.
        scale_factor: s, coarse/fine pixel size ratio (cells of s x s fine pixels, laid on the
            coarse pixels of a block-replicated coarse image (:func:`estimate_cell_offset`), else
            from (0, 0); H, W need not be multiples of s); None = estimated
            (:func:`estimate_scale_factor`).
        preset: "fsdaf_idl" (default) or "zhu2016".
        class_map: optional (H, W) integer classification of F1 (<= 0 = unclassified); if None,
            F1 is classified by k-means (``n_classes``, ``seed``).
        valid_mask: optional (H, W) bool, True = valid.
        return_diagnostics: also return :class:`FSDAFDiagnostics`.
        config: a complete :class:`FSDAFConfig` (then ``preset`` and ``options`` must be unset).
        **options: any option of :data:`OPTION_HELP`; None = preset value.
    Returns:
        (C, H, W) float32 prediction, NaN at invalid pixels (and diagnostics if asked).
    """
    check_fusion_inputs(coarse_t1, fine_t1, coarse_t2)
    check_reflectance("FSDAF", coarse_t1=coarse_t1, fine_t1=fine_t1, coarse_t2=coarse_t2)
    c1, f1, c2 = _as_float(coarse_t1), _as_float(fine_t1), _as_float(coarse_t2)
    source = ArraySource([(c1, f1)], c2)
    if not return_diagnostics:
        prepared = prepare(
            source, scale_factor=scale_factor, preset=preset, class_map=class_map, valid_mask=valid_mask,
            config=config, **options,
        )  # fmt: skip
        return predict_scene(prepared, source)
    # diagnostics: computed on the scene padded so that its cells fall on coarse pixels, then cropped
    _check_maps(source, class_map, valid_mask)
    scale_factor, pad_rows, pad_cols = _alignment(source, scale_factor, preset, config, options)
    if pad_rows or pad_cols:
        pad = ((0, 0), (pad_rows, 0), (pad_cols, 0))
        c1, f1, c2 = (np.pad(a, pad, constant_values=np.nan) for a in (c1, f1, c2))
        source = ArraySource([(c1, f1)], c2)
        class_map = _pad_map(class_map, pad_rows, pad_cols, 0)
        valid_mask = _pad_map(valid_mask, pad_rows, pad_cols, False)
    model = _scene_model(
        source, scale_factor=scale_factor, preset=preset, class_map=class_map, valid_mask=valid_mask,
        config=config, options=options,
    )  # fmt: skip
    halo = block_margin_cells(model.config) * model.config.scale_factor if model.config is not None else 0
    if model.config is None or model.statistics is None:
        raise ValueError("no valid pixels: nothing to diagnose")
    nb, h, w = f1.shape
    diag = {
        name: np.full(shape, np.nan)
        for name, shape in (
            ("temporal", (nb, h, w)),
            ("spatial", (nb, h, w)),
            ("residual", (nb, h, w)),
            ("residual_share", (nb, h, w)),
            ("homogeneity", (h, w)),
            ("total_change", (nb, h, w)),
        )
    }

    def strip(block: Block, top: int, bottom: int) -> Array:
        return model.predict_strip(block, top, bottom, diag)

    out = predict_scene(RowBlocks(strip, halo=halo, starts=model.row_starts), source)
    labels = np.zeros((h, w), np.int32)
    for block in iter_source_blocks(source, _STAT_ROWS):
        _, fb, _, valid, rows = _block_inputs(block, valid_mask)
        labels[rows] = model.labeler(fb, valid, rows)
    stats = model.statistics
    crop = (Ellipsis, slice(pad_rows, None), slice(pad_cols, None))
    return out[crop], FSDAFDiagnostics(
        class_map=labels[crop],
        class_change=stats.class_change,
        similarity_threshold=stats.similarity_threshold,
        statistics=stats,
        config=model.config,
        **{name: values[crop] for name, values in diag.items()},
    )

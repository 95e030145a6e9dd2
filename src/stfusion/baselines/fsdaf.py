"""FSDAF: Flexible Spatiotemporal DAta Fusion (Zhu et al. 2016), NumPy/SciPy implementation.

Implements /work/shared/spec/FSDAF.md (section numbers below refer to it). Two presets:

- ``"fsdaf_idl"`` (default): the author's 2019 IDL reference (noise clamp of F1, HI window w,
  residual sign rule and weight clamp, t2 clamp, all-band similarity threshold, weights
  1/((1 + d/w)(1 + S)), out-of-range repair).
- ``"zhu2016"``: the paper (HI window of one coarse pixel, signed residual weights, same-class
  similar pixels, weights 1/(1 + d/w)).

Everything takes float reflectance (0..1) on the fine grid, bands first: ``(C, H, W)``. NaN in any
input, ``valid_mask == False`` or ``class_map <= 0`` marks an invalid pixel: it is excluded from
every statistic and neighbourhood and its output is NaN.

Processing is global (the spec) or block-wise (``block_size`` in coarse cells). In block mode the
global quantities (classification, noise clamp, class changes ΔF, similarity thresholds, t2 clamp
bounds) are still computed over the whole image; each block is read with a margin of
``block_margin_cells(config)`` coarse cells, which makes the homogeneity index, the residual
distribution and the final neighbourhood step exact. The only block-local step is the thin-plate
spline (3.6), fitted on the control points of the block plus at least ``tps_margin`` cells around
it; this is the (small) difference between blocked and global results.

Low-level pieces (:func:`fit_classes`, :func:`fit_noise_fix`, :func:`cell_table`,
:func:`finalize_statistics`, :func:`block_windows`, :func:`fsdaf_block`) are public so that a
streaming driver can run FSDAF on scenes that do not fit in memory (see benchmarks/bench_fsdaf.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import lsq_linear

from stfusion.blocks import check_fusion_inputs

Array = NDArray[Any]
Preset = Literal["fsdaf_idl", "zhu2016"]
SimilarRule = Literal["threshold", "class"]
FinalWeighting = Literal["idl", "paper"]

PRESETS: tuple[str, ...] = ("fsdaf_idl", "zhu2016")

#: Largest number of fine pixels per chunk of the final neighbourhood step (memory per worker is
#: about chunk * (2w+1)² * 12 bytes: 8192 px, w = 20 -> 165 MB).
_FINAL_CHUNK_PIXELS = 8192
#: Pixels used to fit the k-means fallback classification.
_KMEANS_SAMPLE = 100_000


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FSDAFConfig:
    """All FSDAF knobs (spec section 2). Build with :meth:`from_preset` to get a preset's values.

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
        block_size: None = global processing; else core block side in coarse cells.
        tps_margin: minimum extra coarse cells of TPS control points around a block's
            evaluation area (block mode only).
        n_jobs: worker threads of the final neighbourhood step.
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
    block_size: int | None = None
    tps_margin: int = 3
    n_jobs: int = 1

    @classmethod
    def from_preset(cls, preset: str = "fsdaf_idl", *, scale_factor: int, **overrides: Any) -> FSDAFConfig:
        """Preset values (spec section 4) with ``overrides`` applied, validated.

        ``hi_half_window`` defaults to ``window`` ("fsdaf_idl") or ⌊s/2⌋ ("zhu2016").
        ``None`` overrides are ignored (they mean "preset value").
        """
        if preset not in PRESETS:
            raise ValueError(f"unknown FSDAF preset {preset!r}; choose one of {PRESETS}")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(overrides) - {f for f in cls.__dataclass_fields__ if f != "preset"}
        if unknown:
            raise TypeError(f"unknown FSDAF option(s) {sorted(unknown)}")
        window = int(overrides.get("window", 20))
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
        config = cls(scale_factor=scale_factor, preset=preset, **base)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError naming the offending option and the allowed range."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        def is_int(value: Any) -> bool:
            return isinstance(value, int | np.integer) and not isinstance(value, bool)

        need(
            is_int(self.scale_factor) and self.scale_factor >= 1,
            f"scale_factor must be an integer >= 1, got {self.scale_factor!r}",
        )
        need(is_int(self.window) and self.window >= 1, f"window must be >= 1, got {self.window!r}")
        need(
            is_int(self.n_similar) and self.n_similar >= 1,
            f"n_similar must be >= 1, got {self.n_similar!r}",
        )
        need(is_int(self.n_pure) and self.n_pure >= 1, f"n_pure must be >= 1, got {self.n_pure!r}")
        need(
            len(self.quantiles) == 2 and 0.0 <= self.quantiles[0] <= self.quantiles[1] <= 1.0,
            f"quantiles must be (q_lo, q_hi) with 0 <= q_lo <= q_hi <= 1, got {self.quantiles!r}",
        )
        need(
            0.0 <= self.min_fraction < 1.0,
            f"min_fraction must be in [0, 1), got {self.min_fraction!r}",
        )
        need(
            is_int(self.hi_half_window) and self.hi_half_window >= 0,
            f"hi_half_window must be an integer >= 0, got {self.hi_half_window!r}",
        )
        need(
            self.dn_min < self.dn_max,
            f"dn_min must be < dn_max, got {self.dn_min!r}, {self.dn_max!r}",
        )
        need(self.eps_cw >= 0.0, f"eps_cw must be >= 0, got {self.eps_cw!r}")
        need(
            self.final_weighting in ("idl", "paper"),
            f"final_weighting must be 'idl' or 'paper', got {self.final_weighting!r}",
        )
        need(
            self.similar_rule in ("threshold", "class"),
            f"similar_rule must be 'threshold' or 'class', got {self.similar_rule!r}",
        )
        need(
            is_int(self.n_classes) and self.n_classes >= 1,
            f"n_classes must be >= 1, got {self.n_classes!r}",
        )
        need(
            self.block_size is None or (is_int(self.block_size) and self.block_size >= 1),
            f"block_size must be None or an integer >= 1 (coarse cells), got {self.block_size!r}",
        )
        need(
            is_int(self.tps_margin) and self.tps_margin >= 1,
            f"tps_margin must be an integer >= 1 (coarse cells), got {self.tps_margin!r}",
        )
        need(is_int(self.n_jobs) and self.n_jobs >= 1, f"n_jobs must be >= 1, got {self.n_jobs!r}")


def block_margin_cells(config: FSDAFConfig) -> int:
    """Margin (coarse cells) read around each block in block mode.

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


def block_windows(height: int, width: int, *, config: FSDAFConfig) -> list[BlockWindow]:
    """Tile an H x W image into cell-aligned blocks (one whole-image block if block_size is None)."""
    if config.block_size is None:
        whole = (slice(0, height), slice(0, width))
        return [BlockWindow(core=whole, read=whole)]
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


def fit_classes(samples: Array, *, n_classes: int, seed: int, max_iter: int = 100) -> Array:
    """k-means (k-means++ seeding) on pixel spectra: the spec's deterministic ISODATA substitute.

    Args:
        samples: (N, nb) spectra of valid pixels (reflectance).
        n_classes: k (reduced to the number of distinct spectra if smaller).
        seed: seed of the k-means++ seeding.
    Returns:
        (Lc, nb) float64 centres, ordered by ascending band-1 value (class c = row c-1).
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError("fit_classes needs a non-empty (N, nb) sample of valid pixels")
    k = min(n_classes, np.unique(x, axis=0).shape[0])
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(x.shape[0])]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = d2.sum()
        idx = rng.choice(x.shape[0], p=d2 / total) if total > 0 else int(rng.integers(x.shape[0]))
        centres[j] = x[idx]
        d2 = np.minimum(d2, ((x - centres[j]) ** 2).sum(axis=1))
    labels = np.full(x.shape[0], -1)
    for _ in range(max_iter):
        dist = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2)
        new = dist.argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = labels == j
            if members.any():
                centres[j] = x[members].mean(axis=0)
            else:  # empty cluster: move it to the worst-fitted pixel
                far = int(dist[np.arange(x.shape[0]), labels].argmax())
                centres[j] = x[far]
    order = np.lexsort(centres.T[::-1])  # band 1 first, further bands break ties
    return np.asarray(centres[order])


def classify(fine: Array, valid: Array, centres: Array) -> Array:
    """Nearest-centre labels 1..Lc for valid pixels, 0 elsewhere.

    Args:
        fine: (nb, H, W) reflectance.
        valid: (H, W) bool.
        centres: (Lc, nb) from :func:`fit_classes`.
    Returns:
        (H, W) int32.
    """
    labels = np.zeros(valid.shape, dtype=np.int32)
    pixels = np.asarray(fine[:, valid], dtype=np.float64).T  # (N, nb)
    result = np.empty(pixels.shape[0], dtype=np.int32)
    c = np.asarray(centres, dtype=np.float64)
    c_norm = (c**2).sum(axis=1)
    step = 262_144
    for i in range(0, pixels.shape[0], step):
        chunk = pixels[i : i + step]
        # |x|² is the same for every centre, so it is left out of the comparison
        dist = c_norm[None, :] - 2.0 * chunk @ c.T
        result[i : i + step] = dist.argmin(axis=1) + 1
    labels[valid] = result
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


def fit_noise_fix(values: Array, *, dn_min: float, dn_max: float) -> NoiseFix:
    """Thresholds of the noise clamp from the valid F1 values, (nb, N) (spec 3.0)."""
    nb = values.shape[0]
    low, high = np.empty(nb), np.empty(nb)
    fill_low, fill_high = np.empty(nb), np.empty(nb)
    for b in range(nb):
        v = np.sort(np.asarray(values[b], dtype=np.float64))
        n = v.size
        if n == 0:
            low[b] = high[b] = fill_low[b] = fill_high[b] = np.nan
            continue
        lo = v[math.floor(1e-4 * n)]
        hi = v[min(math.floor(0.9999 * n), n - 1)]
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
        cells: (n_cells, 2) global (cell row, cell col); rows are in raster order of these, which
            fixes the tie order of the purest-cell selection (3.3).
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
    """Steps (1)-(4) over a cell-aligned region (whole image, or one core block of it).

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
    nb = fine_t1_fixed.shape[0]
    vf = valid.astype(np.float64)
    count = _cell_sum(vf, s)
    pixels = _cell_sum(np.ones_like(vf), s)
    with np.errstate(invalid="ignore", divide="ignore"):
        c1 = _cell_sum(np.where(valid, coarse_t1, 0.0), s) / count
        c2 = _cell_sum(np.where(valid, coarse_t2, 0.0), s) / count
    delta = (c2 - c1).reshape(nb, -1).T
    fractions = np.empty((count.size, n_classes))
    for c in range(n_classes):
        fractions[:, c] = (_cell_sum((class_map == c + 1).astype(np.float64), s) / pixels).ravel()
    fractions[fractions.sum(axis=1) <= 0.999] = 0.0
    f1_min = np.full((n_classes, nb), np.nan)
    f1_max = np.full((n_classes, nb), np.nan)
    for c in range(n_classes):
        members = class_map == c + 1
        if members.any():
            vals = fine_t1_fixed[:, members]
            f1_min[c], f1_max[c] = vals.min(axis=1), vals.max(axis=1)
    if valid.any():
        c2v = coarse_t2[:, valid]
        c2_min, c2_max = c2v.min(axis=1).astype(np.float64), c2v.max(axis=1).astype(np.float64)
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
    """Concatenate the cells of several regions (for block-wise statistics), raster order."""
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
        fractions: (n_cells, Lc) class fractions.
        delta_coarse: (n_cells, nb) coarse change ΔC; NaN rows (no valid pixels) are ignored.
    Returns:
        (Lc, nb) float64 ΔF(c, b).
    """
    f = np.asarray(fractions, dtype=np.float64)
    dc = np.asarray(delta_coarse, dtype=np.float64)
    ok = np.isfinite(dc).all(axis=1)
    f, dc = f[ok], dc[ok]
    n_cells, lc = f.shape
    nb = dc.shape[1]
    out = np.zeros((lc, nb))
    if n_cells == 0:
        return out
    sd = dc.std(axis=0, ddof=1) if n_cells > 1 else np.zeros(nb)
    lo_b, hi_b = dc.min(axis=0) - sd, dc.max(axis=0) + sd
    # purest cells per class: by fraction descending, ties by ascending cell index
    purest = []
    for c in range(lc):
        cand = np.flatnonzero(f[:, c] > min_fraction)
        order = np.argsort(-f[cand, c], kind="stable")
        purest.append(cand[order][:n_pure])
    for b in range(nb):
        rows = []
        for idx in purest:
            n = idx.size
            if n == 0:
                continue
            v = np.sort(dc[idx, b])
            a = v[math.floor(quantiles[0] * n + 1e-9)]
            z = v[min(math.floor(quantiles[1] * n + 1e-9), n - 1)]
            keep = idx[(dc[idx, b] >= a) & (dc[idx, b] <= z)]
            rows.append(keep)
        sel = np.concatenate(rows) if rows else np.zeros(0, dtype=int)
        x, y = f[sel], dc[sel, b]
        present = (x != 0).any(axis=0)
        g = np.full(lc, dc[:, b].mean())  # classes never present above min_fraction
        if present.any():
            if hi_b[b] <= lo_b[b]:
                g[present] = lo_b[b]
            else:
                res = lsq_linear(x[:, present], y, bounds=(lo_b[b], hi_b[b]), method="bvls")
                g[present] = res.x
        out[:, b] = g
    return out


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


def finalize_statistics(
    table: CellTable,
    *,
    n_classes: int,
    similarity: Array,
    noise: NoiseFix | None,
    config: FSDAFConfig,
) -> FSDAFStatistics:
    """Unmix ΔF and derive the t2 clamp bounds from a (merged) cell table."""
    change = unmix_class_change(
        table.fractions,
        table.delta_coarse,
        n_pure=config.n_pure,
        quantiles=config.quantiles,
        min_fraction=config.min_fraction,
    )
    with np.errstate(invalid="ignore"):
        tp_min = np.fmin.reduce(table.f1_class_min + change, axis=0)
        tp_max = np.fmax.reduce(table.f1_class_max + change, axis=0)
    low = np.maximum(np.fmin(table.c2_min, tp_min), config.dn_min)
    high = np.minimum(np.fmax(table.c2_max, tp_max), config.dn_max)
    return FSDAFStatistics(n_classes, change, np.asarray(similarity), noise, low, high)


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


def fit_tps(points: Array, values: Array) -> ThinPlateSpline:
    """Fit f_b(y, x) = a0 + a1 x + a2 y + Σ β_i φ(r_i) through (points, values) for all bands.

    Args:
        points: (P, 2) (row, col) fine-pixel coordinates.
        values: (P, nb) values at the control points.
    """
    pts = np.asarray(points, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    origin = (float(pts[:, 0].mean()), float(pts[:, 1].mean()))
    length = float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 1.0))
    u = (pts - np.array(origin)) / length
    p = u.shape[0]
    r2 = ((u[:, None, :] - u[None, :, :]) ** 2).sum(axis=2)
    poly = np.column_stack([np.ones(p), u[:, 1], u[:, 0]])
    system = np.zeros((p + 3, p + 3))
    system[:p, :p] = _tps_kernel(r2)
    system[:p, p:] = poly
    system[p:, :p] = poly.T
    rhs = np.zeros((p + 3, vals.shape[1]))
    rhs[:p] = vals
    if p >= 3 and np.linalg.matrix_rank(poly) == 3:
        coef = np.linalg.solve(system, rhs)
    else:  # collinear control points: the affine part is not unique, take the min-norm one
        coef = np.linalg.lstsq(system, rhs, rcond=None)[0]
    return ThinPlateSpline(pts, coef[:p], coef[p:], origin, length)


def evaluate_tps(tps: ThinPlateSpline, rows: Array, cols: Array) -> Array:
    """Evaluate on the grid rows x cols (fine-pixel indices): returns (nb, len(rows), len(cols))."""
    ur = (np.asarray(rows, dtype=np.float64) - tps.origin[0]) / tps.length
    uc = (np.asarray(cols, dtype=np.float64) - tps.origin[1]) / tps.length
    pr = (tps.points[:, 0] - tps.origin[0]) / tps.length
    pc = (tps.points[:, 1] - tps.origin[1]) / tps.length
    nb = tps.beta.shape[1]
    out = np.empty((nb, ur.size, uc.size))
    dc2 = (uc[:, None] - pc[None, :]) ** 2  # (nx, P)
    step = max(1, 2_000_000 // max(1, uc.size * pr.size))
    for i in range(0, ur.size, step):
        dr2 = (ur[i : i + step, None] - pr[None, :]) ** 2  # (ny_c, P)
        r2 = dr2[:, None, :] + dc2[None, :, :]
        val = _tps_kernel(r2).reshape(-1, pr.size) @ tps.beta  # (ny_c * nx, nb)
        val = val.reshape(-1, uc.size, nb)
        val += (
            tps.affine[0] + uc[None, :, None] * tps.affine[1] + ur[i : i + step, None, None] * (tps.affine[2])
        )
        out[:, i : i + step] = np.moveaxis(val, -1, 0)
    return out


# --------------------------------------------------------------------------------------------
# 3.7 homogeneity, 3.8 residual distribution
# --------------------------------------------------------------------------------------------


def _box_sum(values: Array, half: int) -> Array:
    """Sum over a (2·half+1)² window clipped to the array (exact, integral image)."""
    h, w = values.shape
    ii = np.zeros((h + 1, w + 1), dtype=np.int64)
    ii[1:, 1:] = values.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
    r0 = np.clip(np.arange(h) - half, 0, h)
    r1 = np.clip(np.arange(h) + half + 1, 0, h)
    c0 = np.clip(np.arange(w) - half, 0, w)
    c1 = np.clip(np.arange(w) + half + 1, 0, w)
    return np.asarray(
        ii[r1][:, c1] - ii[r0][:, c1] - ii[r1][:, c0] + ii[r0][:, c0],
    )


def homogeneity_index(class_map: Array, half_window: int) -> Array:
    """HI(p) = share of the clipped window around p with the class of p (eq. 11).

    Args:
        class_map: (H, W) labels 1..Lc, 0 = invalid.
        half_window: window half size (fine pixels).
    Returns:
        (H, W) float64 in (0, 1]; NaN where class_map is 0.
    """
    counts = _box_sum(np.ones(class_map.shape, dtype=np.int64), half_window)
    hi = np.full(class_map.shape, np.nan)
    for c in np.unique(class_map[class_map > 0]):
        members = class_map == c
        hi[members] = _box_sum(members, half_window)[members] / counts[members]
    return hi


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
    s = scale_factor
    shape = valid.shape
    r_big = _cell_expand(residual, s, shape)
    e = spatial - temporal
    if sign_rule:
        e = np.abs(np.where(r_big <= 0, np.minimum(e, 0.0), np.maximum(e, 0.0)))
        e_he = np.abs(r_big)
    else:
        e_he = r_big
    cw = e * homogeneity + e_he * (1.0 - homogeneity) + eps_cw
    cw = np.where(valid, cw, 0.0)
    count = _cell_sum(valid.astype(np.float64), s)
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = cw / _cell_expand(_cell_sum(cw, s) / count, s, shape)
        if sign_rule:
            mean_w = _cell_expand(_cell_sum(np.where(valid, weight, 0.0), s) / count, s, shape)
            weight = np.where(weight > 10.0, mean_w, weight)
            weight = weight / _cell_expand(_cell_sum(np.where(valid, weight, 0.0), s) / count, s, shape)
    return np.asarray(np.where(valid, weight * r_big, 0.0))


# --------------------------------------------------------------------------------------------
# 3.10 final neighbourhood step
# --------------------------------------------------------------------------------------------


def _window_offsets(half: int) -> tuple[Array, Array]:
    """Offsets (dy, dx) of a (2h+1)² window ordered by distance, then raster order, and d."""
    dy, dx = np.mgrid[-half : half + 1, -half : half + 1]
    dy, dx = dy.ravel(), dx.ravel()
    d = np.sqrt(dy**2 + dx**2)
    order = np.lexsort((dx, dy, d))
    return np.column_stack([dy[order], dx[order]]), d[order]


def _similar_chunk(
    f1p: Array,
    dtp: Array,
    lp: Array | None,
    rows: tuple[int, int],
    cols: tuple[int, int],
    *,
    window: int,
    n_similar: int,
    threshold: Array | None,
    weighting: FinalWeighting,
) -> tuple[Array, Array, Array]:
    """Final step for targets rows x cols (unpadded coordinates) of NaN-padded arrays.

    Returns (prediction (nb, M), selected offset ids (M, n), weights (M, n)); M = targets in
    raster order, weights 0 for unused slots.
    """
    w = window
    offsets, dist = _window_offsets(w)
    n_off = offsets.shape[0]
    nb = f1p.shape[0]
    (ra, rb), (ca, cb) = rows, cols
    t = f1p[:, ra + w : rb + w, ca + w : cb + w]
    m = t.shape[1] * t.shape[2]
    t_valid = np.isfinite(t).all(axis=0)
    inv = 1.0 / (np.abs(t) + 1e-8)
    keys = np.empty((n_off, t.shape[1], t.shape[2]), dtype=np.float32)
    diff = np.empty_like(t)
    less = np.empty(t.shape, dtype=bool)
    if threshold is not None:
        th = np.asarray(threshold, dtype=t.dtype)[:, None, None]
    lt = lp[ra + w : rb + w, ca + w : cb + w] if lp is not None else None
    for o in range(n_off):
        dy, dx = offsets[o]
        q = f1p[:, ra + w + dy : rb + w + dy, ca + w + dx : cb + w + dx]
        np.subtract(q, t, out=diff)
        np.abs(diff, out=diff)
        if threshold is not None:
            np.less(diff, th, out=less)
            cand = less.all(axis=0)
        else:
            assert lp is not None and lt is not None
            lq = lp[ra + w + dy : rb + w + dy, ca + w + dx : cb + w + dx]
            cand = (lq == lt) & (lt > 0)
        np.multiply(diff, inv, out=diff)
        score = diff.sum(axis=0)
        if threshold is not None:  # reference key (S + 1e-5)(10 + d/w); paper rule: S
            score += 1e-5
            score *= 10.0 + dist[o] / w
        if o == 0:  # the target itself is always a candidate
            cand = t_valid
            score = np.full_like(score, 1e-4 if threshold is not None else 0.0)
        keys[o] = np.where(cand, score, np.inf)
    # pack (key, offset id) into one int64 so that selection is exact and deterministic:
    # positive float32 bit patterns sort like the floats; offsets are in (d, raster) order.
    bits = max(1, int(n_off - 1).bit_length())
    packed = keys.reshape(n_off, m).T.view(np.int32).astype(np.int64, order="C")
    packed <<= bits
    packed |= np.arange(n_off, dtype=np.int64)
    n = min(n_similar, n_off)
    part = np.partition(packed, n - 1, axis=1)[:, :n] if n < n_off else packed
    sel = (part & ((1 << bits) - 1)).astype(np.intp)  # (M, n)
    used = (part >> bits) < np.int64(np.float32(np.inf).view(np.int32))
    # gather the selected neighbours in the working precision
    hp, wp = f1p.shape[1:]
    rr, cc = np.mgrid[ra + w : rb + w, ca + w : cb + w]
    flat = (rr.ravel()[:, None] + offsets[sel, 0]) * wp + (cc.ravel()[:, None] + offsets[sel, 1])
    f1_flat = f1p.reshape(nb, hp * wp)
    tt = t.reshape(nb, m)
    q = f1_flat[:, flat].astype(np.float64)  # (nb, M, n)
    spectral = (np.abs(q - tt[:, :, None]) / (np.abs(tt[:, :, None]) + 1e-8)).sum(axis=0)
    d = dist[sel]
    with np.errstate(invalid="ignore"):
        omega = 1.0 / (1.0 + d / w)
        if weighting == "idl":
            omega = omega / (1.0 + spectral)
    omega = np.where(used, omega, 0.0)
    total = omega.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = omega / total
    change = dtp.reshape(nb, hp * wp)[:, flat]
    change = np.where(used[None], change, 0.0)
    pred = tt.astype(np.float64) + (weights[None] * change).sum(axis=2)
    pred[:, ~t_valid.ravel()] = np.nan
    return pred, sel, np.where(used, weights, 0.0)


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
    n_jobs: int = 1,
) -> Array:
    """Final prediction F1 + Σ W_q ΔF_tot(q) over similar pixels (spec 3.10, eqs. 20-25).

    Args:
        fine_t1: (nb, h, w) original F1, NaN = invalid (never a candidate, NaN output).
        total_change: (nb, h, w) ΔF_tot.
        window: w (half window); n_similar: n.
        rule: "threshold" (needs ``threshold``, (nb,) th_b) or "class" (needs ``class_map``).
        weighting: "idl" or "paper" (eq. 23).
        targets: region to predict (default: everything); candidates come from the whole array.
        n_jobs: worker threads.
    Returns:
        (nb, th, tw) float64 prediction for the target region (no range repair).
    """
    nb, h, wd = fine_t1.shape
    if rule == "threshold" and threshold is None:
        raise ValueError("rule 'threshold' needs threshold=(nb,) th_b")
    if rule == "class" and class_map is None:
        raise ValueError("rule 'class' needs class_map")
    rs, cs = targets if targets is not None else (slice(0, h), slice(0, wd))
    w = window
    f1p = np.pad(fine_t1, ((0, 0), (w, w), (w, w)), constant_values=np.nan)
    dtp = np.pad(np.asarray(total_change, dtype=np.float64), ((0, 0), (w, w), (w, w)))
    lp = None
    if rule == "class":
        assert class_map is not None
        lp = np.pad(np.where(np.isfinite(fine_t1).all(axis=0), class_map, 0), w)
    out = np.full((nb, rs.stop - rs.start, cs.stop - cs.start), np.nan)
    step = max(1, _FINAL_CHUNK_PIXELS // max(1, cs.stop - cs.start))

    def work(r0: int) -> None:
        r1 = min(r0 + step, rs.stop)
        pred, _, _ = _similar_chunk(
            f1p,
            dtp,
            lp,
            (r0, r1),
            (cs.start, cs.stop),
            window=w,
            n_similar=n_similar,
            threshold=threshold if rule == "threshold" else None,
            weighting=weighting,
        )
        out[:, r0 - rs.start : r1 - rs.start] = pred.reshape(nb, r1 - r0, -1)

    starts = list(range(rs.start, rs.stop, step))
    if n_jobs > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            list(pool.map(work, starts))
    else:
        for r0 in starts:
            work(r0)
    return out


# --------------------------------------------------------------------------------------------
# one block
# --------------------------------------------------------------------------------------------


@dataclass
class BlockResult:
    """Prediction of a block core, (nb, h, w) float32, and optional diagnostics for the core."""

    prediction: Array
    diagnostics: dict[str, Array] = field(default_factory=dict)


def fsdaf_block(
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
) -> BlockResult:
    """Steps 3.4-3.10 for one read window (spec); exact for ``core`` given enough margin.

    Args:
        coarse_t1, fine_t1, coarse_t2: (nb, h, w) reflectance of the read window. The window
            must start on a coarse-cell boundary of the image; its edges must be the image
            edges or lie at least ``block_margin_cells(config)`` cells beyond the core.
        class_map: (h, w) labels 1..Lc (global numbering), 0 = invalid.
        valid: (h, w) bool (already including class_map > 0).
        statistics: global quantities (:func:`finalize_statistics`).
        core: region to predict (default: everything).
    Returns:
        :class:`BlockResult` for the core.
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
    f1 = np.asarray(fine_t1, dtype=np.float64)
    f1_fixed = apply_noise_fix(f1, statistics.noise) if statistics.noise is not None else f1
    c1 = np.asarray(coarse_t1, dtype=np.float64)
    c2 = np.asarray(coarse_t2, dtype=np.float64)
    # (1)-(3) cell means over valid pixels
    count = _cell_sum(valid.astype(np.float64), s)
    with np.errstate(invalid="ignore", divide="ignore"):
        c1_cell = _cell_sum(np.where(valid, c1, 0.0), s) / count
        c2_cell = _cell_sum(np.where(valid, c2, 0.0), s) / count
        f1_cell = _cell_sum(np.where(valid, f1_fixed, 0.0), s) / count
    # (7) temporal prediction
    change = np.vstack([np.zeros((1, nb)), statistics.class_change])  # row 0: unclassified
    temporal = f1_fixed + np.moveaxis(change[class_map], -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tp_cell = _cell_sum(np.where(valid, temporal, 0.0), s) / count
    residual = (c2_cell - c1_cell) - (tp_cell - f1_cell)  # (8)
    # (9)-(10) TPS through the cell means of C2 at the cell centroids (whole window)
    rows_idx = np.arange(h, dtype=np.float64)
    cols_idx = np.arange(w, dtype=np.float64)
    cy = _cell_sum(np.broadcast_to(rows_idx[:, None], (h, w)), s) / _cell_sum(np.ones((h, w)), s)
    cx = _cell_sum(np.broadcast_to(cols_idx[None, :], (h, w)), s) / _cell_sum(np.ones((h, w)), s)
    control = count > 0
    e_sl = (slice(e_r0, e_r1), slice(e_c0, e_c1))
    if control.any():
        tps = fit_tps(np.column_stack([cy[control], cx[control]]), c2_cell[:, control].T)
        spatial = evaluate_tps(tps, rows_idx[e_sl[0]], cols_idx[e_sl[1]])
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
    f2_prime = temporal[(slice(None), *e_sl)] + share  # (17)
    if config.clamp_t2:  # (18)
        f2_prime = np.clip(f2_prime, statistics.t2_low[:, None, None], statistics.t2_high[:, None, None])
    total = np.where(v_e, f2_prime - f1_fixed[(slice(None), *e_sl)], np.nan)  # (19)
    # 3.10 on the original F1
    f1_nan = np.where(valid, fine_t1, np.nan).astype(fine_t1.dtype, copy=False)
    if not np.issubdtype(f1_nan.dtype, np.floating):
        f1_nan = f1_nan.astype(np.float32)
    t_core = (slice(rs.start - e_r0, rs.stop - e_r0), slice(cs.start - e_c0, cs.stop - e_c0))
    pred = similar_pixel_prediction(
        f1_nan[(slice(None), *e_sl)],
        total,
        window=config.window,
        n_similar=config.n_similar,
        rule=config.similar_rule,
        weighting=config.final_weighting,
        threshold=statistics.similarity_threshold,
        class_map=class_map[e_sl],
        targets=t_core,
        n_jobs=config.n_jobs,
    )
    core_sl = (slice(None), rs, cs)
    if config.range_repair:
        with np.errstate(invalid="ignore"):
            bad = (pred < config.dn_min) | (pred > config.dn_max)
            repair = np.clip(f1[core_sl] + c2[core_sl] - c1[core_sl], config.dn_min, config.dn_max)
        pred = np.where(bad, repair, pred)
    result = BlockResult(pred.astype(np.float32))
    if return_diagnostics:
        sub = (slice(None), *t_core)
        result.diagnostics = {
            "temporal": temporal[core_sl],
            "spatial": spatial[sub],
            "residual": np.where(valid[rs, cs], _cell_expand(residual, s, (h, w))[core_sl], np.nan),
            "residual_share": share[sub],
            "homogeneity": np.where(valid[rs, cs], homog[t_core], np.nan),
            "total_change": total[sub],
        }
    return result


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


@dataclass
class FSDAFDiagnostics:
    """Intermediate results (spec section 1), full image unless stated.

    Attributes:
        class_map: (H, W) int32 classes 1..Lc used (0 = invalid).
        class_change: (Lc, nb) ΔF per class.
        similarity_threshold: (nb,) th_b.
        temporal: (nb, H, W) F_TP; spatial: (nb, H, W) F_SP (block-local TPS in block mode).
        residual: (nb, H, W) coarse residual R(i, b) broadcast to the cell's pixels.
        residual_share: (nb, H, W) r(p, b) distributed to each pixel.
        homogeneity: (H, W) HI; total_change: (nb, H, W) ΔF_tot.
        statistics: the global statistics object.
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


def prepare_statistics(
    coarse_t1: Array,
    fine_t1: Array,
    coarse_t2: Array,
    class_map: Array,
    valid: Array,
    *,
    n_classes: int,
    config: FSDAFConfig,
) -> FSDAFStatistics:
    """Global statistics of an in-memory scene (exact; the streaming benchmark builds them
    block-wise with :func:`cell_table` / :func:`merge_cell_tables`)."""
    values = fine_t1[:, valid]
    noise = fit_noise_fix(values, dn_min=config.dn_min, dn_max=config.dn_max) if config.noise_fix else None
    fixed = apply_noise_fix(fine_t1, noise) if noise is not None else fine_t1
    tables = []
    for win in block_windows(*valid.shape, config=config):
        sl = (slice(None), *win.core)
        tables.append(
            cell_table(
                coarse_t1[sl],
                fixed[sl],
                coarse_t2[sl],
                class_map[win.core],
                valid[win.core],
                scale_factor=config.scale_factor,
                n_classes=n_classes,
                origin=(win.core[0].start, win.core[1].start),
            )
        )
    return finalize_statistics(
        merge_cell_tables(tables),
        n_classes=n_classes,
        similarity=similarity_threshold(values, n_classes),
        noise=noise,
        config=config,
    )


@overload
def fsdaf(
    coarse_t1: Array,
    fine_t1: Array,
    coarse_t2: Array,
    *,
    scale_factor: int,
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
    scale_factor: int,
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
    scale_factor: int,
    preset: str = "fsdaf_idl",
    class_map: Array | None = None,
    valid_mask: Array | None = None,
    return_diagnostics: bool = False,
    config: FSDAFConfig | None = None,
    **options: Any,
) -> Array | tuple[Array, FSDAFDiagnostics]:
    """Predict the fine image at t2 with FSDAF (fusion interface, see stfusion.fusion).

    Args:
        coarse_t1, fine_t1, coarse_t2: (C, H, W) float reflectance (0..1) on the fine grid;
            coarse images resampled by block replication or smoothly. NaN = invalid.
        scale_factor: s, coarse/fine pixel size ratio (cells of s x s fine pixels from (0, 0);
            H, W need not be multiples of s).
        preset: "fsdaf_idl" (default) or "zhu2016".
        class_map: optional (H, W) integer classification of F1 (<= 0 = unclassified); if None,
            F1 is classified by k-means (``n_classes``, ``seed``).
        valid_mask: optional (H, W) bool, True = valid.
        return_diagnostics: also return :class:`FSDAFDiagnostics`.
        config: a complete :class:`FSDAFConfig` (then ``preset`` and ``options`` must be unset).
        **options: any :class:`FSDAFConfig` field (window, n_similar, n_pure, quantiles,
            min_fraction, hi_half_window, dn_min, dn_max, noise_fix, sign_rule, clamp_t2,
            range_repair, eps_cw, final_weighting, similar_rule, n_classes, seed, block_size,
            tps_margin, n_jobs); None = preset value.
    Returns:
        (C, H, W) float32 prediction, NaN at invalid pixels (and diagnostics if asked).
    """
    check_fusion_inputs(coarse_t1, fine_t1, coarse_t2)
    if config is None:
        config = FSDAFConfig.from_preset(preset, scale_factor=scale_factor, **options)
    else:
        if options or preset != "fsdaf_idl":
            raise ValueError("pass either config= or preset/options, not both")
        if config.scale_factor != scale_factor:
            config = replace(config, scale_factor=scale_factor)
        config.validate()
    nb, h, w = fine_t1.shape

    def as_float(image: Array) -> Array:
        image = np.asarray(image)
        return image if np.issubdtype(image.dtype, np.floating) else image.astype(np.float32)

    c1, f1, c2 = as_float(coarse_t1), as_float(fine_t1), as_float(coarse_t2)
    valid: Array = np.asarray(np.isfinite(c1).all(axis=0) & np.isfinite(f1).all(axis=0))
    valid &= np.isfinite(c2).all(axis=0)
    if valid_mask is not None:
        if valid_mask.shape != (h, w):
            raise ValueError(f"valid_mask must have shape {(h, w)}, got {valid_mask.shape}")
        valid &= np.asarray(valid_mask, dtype=bool)
    if class_map is not None:
        if class_map.shape != (h, w):
            raise ValueError(f"class_map must have shape {(h, w)}, got {class_map.shape}")
        if not np.issubdtype(np.asarray(class_map).dtype, np.integer):
            raise ValueError(f"class_map must be integer labels, got dtype {class_map.dtype}")
        labels, n_classes = renumber_classes(class_map, valid)
    else:
        pixels = f1[:, valid].T
        if pixels.shape[0] == 0:
            labels, n_classes = np.zeros((h, w), dtype=np.int32), 0
        else:
            rng = np.random.default_rng(config.seed)
            if pixels.shape[0] > _KMEANS_SAMPLE:
                pixels = pixels[np.sort(rng.choice(pixels.shape[0], _KMEANS_SAMPLE, False))]
            centres = fit_classes(pixels, n_classes=config.n_classes, seed=config.seed)
            labels = classify(f1, valid, centres)
            labels, n_classes = renumber_classes(labels, valid)
    valid &= labels > 0
    out = np.full((nb, h, w), np.nan, dtype=np.float32)
    if n_classes == 0:
        if return_diagnostics:
            raise ValueError("no valid pixels: nothing to diagnose")
        return out
    stats = prepare_statistics(c1, f1, c2, labels, valid, n_classes=n_classes, config=config)
    diag: dict[str, Array] = {}
    if return_diagnostics:
        for name, shape in (
            ("temporal", (nb, h, w)),
            ("spatial", (nb, h, w)),
            ("residual", (nb, h, w)),
            ("residual_share", (nb, h, w)),
            ("homogeneity", (h, w)),
            ("total_change", (nb, h, w)),
        ):
            diag[name] = np.full(shape, np.nan)
    for win in block_windows(h, w, config=config):
        sl = (slice(None), *win.read)
        res = fsdaf_block(
            c1[sl],
            f1[sl],
            c2[sl],
            labels[win.read],
            valid[win.read],
            statistics=stats,
            config=config,
            core=win.core_in_read,
            return_diagnostics=return_diagnostics,
        )
        out[(slice(None), *win.core)] = res.prediction
        for name, value in res.diagnostics.items():
            diag[name][(..., *win.core)] = value
    if not return_diagnostics:
        return out
    return out, FSDAFDiagnostics(
        class_map=labels,
        class_change=stats.class_change,
        similarity_threshold=stats.similarity_threshold,
        statistics=stats,
        **diag,
    )

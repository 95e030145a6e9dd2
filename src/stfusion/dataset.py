"""Training patches from fusion cases loaded once into memory.

Each case's four images are read once (float32 reflectance), the coarse images degraded once on the
whole scene (the same :func:`~stfusion.transforms.degrade_coarse` step that validation and prediction
apply), and invalid pixels (NaN / nodata in any image) recorded in a validity mask and zero-filled.
Patches are then views into those arrays: a grid with the given stride that also reaches the bottom and
right edges (or seeded random crops); nothing is re-read from disk per patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from stfusion.errors import InputError
from stfusion.inputs import CaseReader, ReadOptions
from stfusion.scenes import ROLES, FusionCase
from stfusion.tiling import tile_starts
from stfusion.transforms import degrade_valid, valid_mask


@dataclass
class CaseArrays:
    """One case in memory: float32 reflectance (C, H, W) per role, coarse already degraded.

    ``valid`` (H, W) bool marks pixels valid in every image; invalid pixels are 0 in the arrays.
    """

    name: str
    coarse_t1: np.ndarray
    fine_t1: np.ndarray
    coarse_t2: np.ndarray
    fine_t2: np.ndarray
    valid: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.fine_t1.shape
        return c, h, w


def load_case(
    case: FusionCase,
    *,
    coarse_factor: int,
    options: ReadOptions | None = None,
) -> CaseArrays:
    """Read, validate, mask and degrade one case with known truth.

    Pixels invalid in any of the four images (nodata, non-finite, masked by ``case.masks``, outside a
    reprojected coarse image's footprint) are False in ``valid``, which the training losses and the
    validation MSE exclude.
    """
    reader = CaseReader(case, require_truth=True, options=options)
    images = {role: reader.read(role) for role in ROLES}
    valid = valid_mask(*images.values())
    if not valid.any():
        raise InputError(f"{case.name}: no pixel is valid in all four images (all nodata?)")
    for role in ("coarse_t1", "coarse_t2"):
        images[role] = degrade_valid(images[role], valid, coarse_factor)
    for role in ROLES:  # arrays hold 0 where invalid; `valid` says which pixels count
        images[role] = np.where(valid[None], images[role], np.float32(0)).astype(np.float32)
    return CaseArrays(name=case.name, valid=valid, **{role: images[role] for role in ROLES})


def load_cases(
    cases: Sequence[FusionCase],
    *,
    coarse_factor: int,
    options: ReadOptions | None = None,
) -> list[CaseArrays]:
    """:func:`load_case` for each case; they must share a band count."""
    loaded = [load_case(case, coarse_factor=coarse_factor, options=options) for case in cases]
    bands = {c.shape[0] for c in loaded}
    if len(bands) > 1:
        raise InputError(f"cases have different band counts {sorted(bands)}; train on one sensor pair")
    return loaded


def split_bands(case: CaseArrays) -> list[CaseArrays]:
    """One one-band case per band of ``case`` (named ``<case>[band i]``, i from 1).

    For a per-band model: datasets of different sensors (6 Landsat bands here, 3 there) train one
    network together, and it predicts any band count band by band.
    """
    return [
        CaseArrays(
            name=f"{case.name}[band {band + 1}]",
            valid=case.valid,
            **{role: getattr(case, role)[band : band + 1] for role in ROLES},
        )
        for band in range(case.shape[0])
    ]


def split_holdout(case: CaseArrays, fraction: float) -> tuple[CaseArrays, CaseArrays]:
    """Split a case into its top rows (training) and its bottom ``fraction`` of rows (validation).

    A spatial hold-out: the same dates, but pixels the model never trains on; at least one row each.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"hold-out fraction must be in (0, 1), got {fraction}")
    height = case.shape[1]
    cut = min(max(height - round(fraction * height), 1), height - 1)

    def part(rows: slice, name: str) -> CaseArrays:
        return CaseArrays(
            name=name,
            valid=case.valid[rows].copy(),
            **{role: getattr(case, role)[:, rows].copy() for role in ROLES},
        )

    return part(slice(0, cut), f"{case.name}[rows 0:{cut}]"), part(
        slice(cut, height), f"{case.name}[rows {cut}:{height}]"
    )


@dataclass(frozen=True)
class PatchIndex:
    case: int
    row: int
    col: int


class PatchDataset(Dataset[dict[str, torch.Tensor]]):
    """Patches of ``patch_size`` from in-memory cases.

    Items are dicts of float32 tensors ``coarse_t1, fine_t1, coarse_t2, fine_t2`` (C, P, P) and
    ``valid`` (1, P, P). With ``random_crops`` = N > 0, each case contributes N crops at positions drawn
    from ``seed`` (fixed for the dataset's life); otherwise a grid with ``stride`` covering the edges.
    Cases of different sizes mix freely (every patch is P x P); a case smaller than the patch is an
    InputError saying the largest patch size that fits.
    """

    def __init__(
        self,
        cases: Sequence[CaseArrays],
        *,
        patch_size: int,
        stride: int,
        random_crops: int = 0,
        seed: int = 0,
    ) -> None:
        if patch_size < 1 or stride < 1:
            raise ValueError(f"patch_size and stride must be positive, got {patch_size}, {stride}")
        self.cases = list(cases)
        self.patch_size = patch_size
        smallest = min(self.cases, key=lambda c: min(c.shape[1:]), default=None)
        if smallest is not None and min(smallest.shape[1:]) < patch_size:
            side = min(smallest.shape[1:])
            raise InputError(
                f"{smallest.name}: {smallest.shape[1]} x {smallest.shape[2]} px is smaller than the training "
                f"patch of {patch_size} px; use --patch-size {side} or less"
            )
        self.index: list[PatchIndex] = []
        rng = np.random.default_rng(seed)
        for number, case in enumerate(self.cases):
            _, height, width = case.shape
            ph, pw = min(patch_size, height), min(patch_size, width)
            if random_crops > 0:
                rows = rng.integers(0, height - ph + 1, size=random_crops)
                cols = rng.integers(0, width - pw + 1, size=random_crops)
                self.index.extend(PatchIndex(number, int(r), int(c)) for r, c in zip(rows, cols, strict=True))
            else:
                overlap_h, overlap_w = max(ph - stride, 0), max(pw - stride, 0)
                for row in tile_starts(height, ph, min(overlap_h, ph - 1)):
                    for col in tile_starts(width, pw, min(overlap_w, pw - 1)):
                        self.index.append(PatchIndex(number, row, col))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        where = self.index[item]
        case = self.cases[where.case]
        _, height, width = case.shape
        rows = slice(where.row, where.row + min(self.patch_size, height))
        cols = slice(where.col, where.col + min(self.patch_size, width))
        patch = {role: torch.from_numpy(getattr(case, role)[:, rows, cols].copy()) for role in ROLES}
        patch["valid"] = torch.from_numpy(case.valid[None, rows, cols].copy())
        return patch


def swap_dates(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The date-swap augmentation: [C1, F1, C2, F2] -> [C2, F2, C1, F1] (learn backward prediction)."""
    swapped = dict(batch)
    swapped["coarse_t1"], swapped["coarse_t2"] = batch["coarse_t2"], batch["coarse_t1"]
    swapped["fine_t1"], swapped["fine_t2"] = batch["fine_t2"], batch["fine_t1"]
    return swapped


def flip_rotate(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Optional augmentation: one random flip / 90-degree rotation applied to every tensor of a batch."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    flip = bool(torch.randint(0, 2, (1,), generator=generator))
    out = {}
    for key, tensor in batch.items():
        moved = torch.rot90(tensor, k, dims=(-2, -1))
        out[key] = torch.flip(moved, dims=(-1,)) if flip else moved
    return out

"""File signatures: real files written by rasterio, torch and pickle, named by their first bytes."""

from __future__ import annotations

import doctest
import pickle
from pathlib import Path

import numpy as np
import torch

from stfusion import formats
from tests.conftest import write_tif


def test_doctests() -> None:
    result = doctest.testmod(formats)
    assert result.attempted >= 2 and result.failed == 0


def test_real_files_are_told_apart(tmp_path: Path) -> None:
    tif = write_tif(tmp_path / "a.tif", np.zeros((1, 4, 4), np.int16))
    ckpt = tmp_path / "m.ckpt"
    torch.save({"weights": torch.zeros(2)}, ckpt)
    legacy = tmp_path / "old.pt"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    heads = {path.name: formats.head(path) for path in (tif, ckpt, legacy, text)}
    assert [formats.is_tiff(h) for h in heads.values()] == [True, False, False, False]
    assert [formats.is_torch_file(h) for h in heads.values()] == [False, True, True, False]
    assert formats.head(tmp_path / "missing.tif") is None and formats.head(tmp_path) is None
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    assert formats.head(empty) == b"" and not formats.is_tiff(formats.head(empty))

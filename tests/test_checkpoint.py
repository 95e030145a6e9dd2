"""Checkpoints: safe loading (no code runs), validation of keys and model arguments, atomic saves."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from stfusion import checkpoint
from stfusion.checkpoint import Checkpoint, ModelSpec
from stfusion.errors import InputError
from stfusion.models import export_reference_state_dict
from tests.conftest import write_tiny_checkpoint


class Trap:
    """Unpickling it would create a file (what an attacker's checkpoint would do with a worse command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_roundtrip_keeps_every_field(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "a.ckpt", bands=3, coarse_factor=4)
    loaded = checkpoint.load(path)
    assert loaded.bands == 3 and loaded.coarse_factor == 4 and loaded.band_names == ["b1", "b2", "b3"]
    assert loaded.versions["torch"] == str(torch.__version__) and not loaded.has_training_state()
    generator = loaded.build_generator()
    assert not generator.training
    checkpoint.save(tmp_path / "b.ckpt", loaded)
    again = checkpoint.load(tmp_path / "b.ckpt")
    assert again.model == loaded.model and again.generator.keys() == loaded.generator.keys()


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"format": checkpoint.FORMAT, "model": {"name": "mlffgan", "bands": 3}, "x": Trap(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(InputError, match="refused: the checkpoint holds Python objects"):
        checkpoint.load(path)
    assert not marker.exists()


def test_checkpoints_of_the_previous_version_still_load(tmp_path: Path) -> None:
    """stfusion 0.1.0 stored torch's version as a TorchVersion object: it is the one allowed class."""
    path = write_tiny_checkpoint(tmp_path / "a.ckpt", bands=2, coarse_factor=1)
    content = torch.load(path, weights_only=True)
    content["versions"]["torch"] = torch.__version__  # a TorchVersion, as 0.1.0 wrote it
    torch.save(content, tmp_path / "old.ckpt")
    assert checkpoint.load(tmp_path / "old.ckpt").bands == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("generator"), "no 'generator' entry"),
        (lambda c: c.update(coarse_factor="x"), "'coarse_factor' has the wrong type"),
        (lambda c: c.update(model=[1]), "'model' has the wrong type"),
        (lambda c: c["model"].update(bands=0), "'bands' must be a positive integer"),
        (lambda c: c["model"].update(name="other"), "model name 'other' is not one of"),
        (lambda c: c["model"].update(kwargs={"channels": "x"}), None),
        (lambda c: c.update(format="other"), "not an stfusion checkpoint"),
        (lambda c: c.update(scale=-1.0), "'scale' must be a positive number"),
        (lambda c: c.update(epoch="x"), "'epoch' must be a non-negative integer, got 'x'"),
        (lambda c: c.update(config="abc"), "'config' must be a dict with string keys"),
        (lambda c: c.update(config={"data": "x"}), "'data' entry is a dict with a list of 'files'"),
        (lambda c: c.update(history=5), "'history' must be a list of dicts"),
        (lambda c: c.update(versions="v"), "'versions' must be a dict of version strings"),
        (lambda c: c.update(best_val="low"), "'best_val' must be a number or None"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, change: object, message: str | None) -> None:
    path = write_tiny_checkpoint(tmp_path / "a.ckpt", bands=3, coarse_factor=4)
    content = torch.load(path, weights_only=True)
    change(content)  # type: ignore[operator]
    torch.save(content, tmp_path / "bad.ckpt")
    if message is None:  # accepted as data, refused when the model is built
        with pytest.raises(InputError, match="bad model arguments"):
            checkpoint.load(tmp_path / "bad.ckpt").build_generator()
        return
    with pytest.raises(InputError, match=message):
        checkpoint.load(tmp_path / "bad.ckpt")


def test_weights_of_another_model_and_damaged_files(tmp_path: Path) -> None:
    spec = ModelSpec("mlffgan", 3, {"channels": [4, 4, 8, 8, 8]})
    other = ModelSpec("mlffgan", 3, {"channels": [4, 4, 8, 8, 16]})
    mixed = Checkpoint(model=spec, generator=other.build().state_dict(), coarse_factor=1)
    checkpoint.save(tmp_path / "mixed.ckpt", mixed)
    with pytest.raises(InputError, match="generator weights do not fit the model"):
        checkpoint.load(tmp_path / "mixed.ckpt").build_generator()
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "mixed.ckpt").read_bytes()[:500])
    with pytest.raises(InputError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "cut.ckpt")
    with pytest.raises(InputError, match="is a folder"):
        checkpoint.load(tmp_path)
    (tmp_path / "image.tif").write_bytes(b"II*\x00" + bytes(100))  # e.g. an input given as --checkpoint
    with pytest.raises(InputError, match=r"image\.tif: not a checkpoint \(a GeoTIFF\)"):
        checkpoint.load(tmp_path / "image.tif")
    (tmp_path / "notes.txt").write_text("weights")
    with pytest.raises(InputError, match=r"notes\.txt: not a checkpoint \(not a PyTorch file\)"):
        checkpoint.load(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "none.ckpt")
    with pytest.raises(InputError, match=r"checkpoint is for 3 bands, but F\.tif has 4"):
        mixed.check_bands(4, "F.tif")
    one_band = Checkpoint(model=ModelSpec("mlffgan", 1, {}), generator={}, coarse_factor=1)
    one_band.check_bands_of_scene(6, "F.tif")  # a one-band model runs band by band on any scene


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tiny_checkpoint(tmp_path / "last.ckpt", bands=3, coarse_factor=4)
    before = path.read_bytes()
    state = checkpoint.load(path)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        checkpoint.save(path, state)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_import_reference_maps_the_authors_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = ModelSpec("mlffgan", 3, {}).build()
    torch.save(export_reference_state_dict(ours.state_dict(), part="generator"), tmp_path / "G.pth")
    imported = checkpoint.import_reference(tmp_path / "G.pth", bands=3, coarse_factor=16)
    for key, value in ours.state_dict().items():
        assert torch.equal(imported.generator[key], value), key
    with pytest.raises(InputError, match="does not fit MLFF-GAN generator with 4 bands"):
        checkpoint.import_reference(tmp_path / "G.pth", bands=4)
    torch.save({"x": Trap(tmp_path / "pwned")}, tmp_path / "evil.pth")
    with pytest.raises(InputError, match="refused"):
        checkpoint.import_reference(tmp_path / "evil.pth", bands=3)
    assert not (tmp_path / "pwned").exists()


def test_band_checks_use_the_band_names_a_checkpoint_carries() -> None:
    spec = ModelSpec("mlffgan", 2, {"channels": [4, 4, 8, 8, 8]})
    named = Checkpoint(
        model=spec, generator=spec.build().state_dict(), coarse_factor=4, band_names=["Red", "NIR"]
    )
    expected = (
        r"is for 2 bands, but s\.tif has 6; it was trained on red, nir: select them with --bands red,nir"
    )
    with pytest.raises(InputError, match=expected):
        named.check_bands_of_scene(6, "s.tif", ["blue", "green", "red", "nir", "swir1", "swir2"])
    with pytest.raises(
        InputError, match=r"the bands of s\.tif are nir, red, not the checkpoint's in its order"
    ):
        named.check_bands_of_scene(2, "s.tif", ["nir", "red"])
    with pytest.raises(InputError, match=r"the bands of s\.tif are nir, swir, not the checkpoint's"):
        named.check_bands_of_scene(2, "s.tif", ["nir", "swir"])  # names that partly agree, crossed
    named.check_bands_of_scene(2, "s.tif", ["red", "nir"])  # the same names, the same order
    named.check_bands_of_scene(2, "s.tif", [None, None])  # unnamed bands: only their number is known
    named.check_bands_of_scene(2, "s.tif", ["B4", "B5"])  # other names: not comparable, not refused
    generic = Checkpoint(
        model=spec, generator=spec.build().state_dict(), coarse_factor=4, band_names=["band1", "band2"]
    )
    with pytest.raises(InputError) as error:
        generic.check_bands_of_scene(6, "s.tif", ["blue", "green", "red", "nir", "swir1", "swir2"])
    assert "trained on" not in str(error.value)

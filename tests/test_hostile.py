"""Hostile and unusual situations, through the command line, as a new user or an attacker would try them.

Classes: malicious and damaged checkpoints (through every command that loads one), nodata of every
dtype and GDAL masks, scale/offset tags, outputs that are inputs, concurrent writers and stale
temporaries, disk full and other write failures, option ranges, tiny and mixed-size images, and
changes between a training run and its resume.

Every case asserts the exit code; for errors exactly one line ``error: ...`` on stderr (or click's
usage error) and no traceback; that no output and no temporary (``*.part*``) file is left; and that
every input file is byte-identical afterwards (sha256 before and after). Valid inputs must succeed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import pickle
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner, Result
from rasterio.enums import ColorInterp

from stfusion import scenes
from stfusion.atomic import temporary_pattern
from stfusion.checkpoint import Checkpoint, ModelSpec
from stfusion.checkpoint import load as load_checkpoint
from stfusion.cli import cli
from stfusion.models import MLFFGenerator, PatchDiscriminator
from stfusion.models.reference import export_reference_state_dict
from tests.conftest import TEST_CRS, TEST_TRANSFORM, make_pair_folder, random_scene, write_tif

ROOT = Path(__file__).resolve().parents[1]
BANDS, HEIGHT, WIDTH = 3, 24, 32

PAIR_NAMES = (
    "2001_281_1008-2001_290_1017",
    "2001_290_1017-2001_306_1102",
    "2001_306_1102-2001_322_1118",
    "2001_322_1118-2001_338_1204",
    "2001_338_1204-2001_354_1220",
    "2001_354_1220-2001_360_1226",
)

#: A tiny MLFF-GAN (channels 4-8), no MS-SSIM (needs >= 161 px patches), small validation tiles.
TINY_TRAIN_CONFIG: dict[str, Any] = {
    "channels": [4, 4, 8, 8, 8],
    "weights": {"adversarial": 0.01, "l1": 1.0, "cosine": 1.0, "ms_ssim": 0.0},
    "val_tile": [32, 32],
    "val_overlap": [8, 8],
}
TRAIN_FLAGS = (
    "--epochs",
    "1",
    "--patch-size",
    "16",
    "--batch-size",
    "2",
    "--coarse-factor",
    "1",
    "--random-crops",
    "1",
)


# --------------------------------------------------------------------------------------------------
# the three checks every case makes: one-line error (or success), nothing left, inputs unchanged


def streams(result: Result | subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of an in-process (CliRunner) or a real process run; an exception
    that escaped the command is added to stderr as the traceback a user would see."""
    if isinstance(result, subprocess.CompletedProcess):
        return result.returncode, result.stdout, result.stderr
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.stdout, stderr


def assert_error(
    result: Result | subprocess.CompletedProcess[str],
    *fragments: str,
    usage: bool | None = False,
    stdout_ok: bool = False,
) -> str:
    """Exit 2 and no traceback; the error is one line ``error: ...`` on stderr (``usage=False``), click's
    usage error (``usage=True``: its ``Usage:``/``Try``/``Error:`` lines), or either (``usage=None``).
    Stdout must be empty unless ``stdout_ok`` (progress printed before a mid-run failure).
    Returns the error line; each fragment must appear in it."""
    code, out, err = streams(result)
    everything = f"--- stdout ---\n{out}\n--- stderr ---\n{err}"
    assert "Traceback" not in out + err, everything
    assert code == 2, f"exit code {code}, expected 2\n{everything}"
    lines = [line for line in err.splitlines() if line.strip()]
    is_usage = bool(lines) and lines[0].startswith("Usage:")
    if usage is None:
        usage = is_usage
    if usage:
        assert is_usage, everything
        errors = [line for line in lines if line.startswith("Error:")]
        assert len(errors) == 1, everything
        line = errors[0]
    else:
        assert len(lines) == 1, f"expected one line on stderr\n{everything}"
        line = lines[0]
        assert line.startswith("error: "), everything
        if not stdout_ok:
            assert not out.strip(), f"expected nothing on stdout\n{everything}"
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in the error line\n{everything}"
    return line


def assert_ok(result: Result | subprocess.CompletedProcess[str]) -> str:
    code, out, err = streams(result)
    assert code == 0 and "Traceback" not in out + err, f"exit {code}\n{out}\n{err}"
    return out


def fingerprint(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (files or folders); links by target, folders by name."""
    found: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        paths = sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [root]
        for path in paths:
            if path.is_symlink():
                found[str(path)] = "link to " + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                found[str(path)] = "folder"
            else:
                found[str(path)] = "missing"
    return found


class Inputs:
    """The inputs of a case: fingerprinted now, compared with :meth:`assert_unchanged` later."""

    def __init__(self, *roots: Path) -> None:
        self.roots = tuple(Path(r) for r in roots)
        self.before = fingerprint(*self.roots)

    def assert_unchanged(self) -> None:
        after = fingerprint(*self.roots)
        changed = sorted(k for k in set(after) | set(self.before) if after.get(k) != self.before.get(k))
        assert not changed, f"inputs changed, appeared or vanished: {changed}"


def assert_no_temporaries(*folders: Path) -> None:
    leftovers = [p for f in folders if Path(f).is_dir() for p in Path(f).rglob("*") if ".part" in p.name]
    assert not leftovers, f"temporary files left: {leftovers}"


def assert_absent(*paths: Path) -> None:
    present = [str(p) for p in paths if os.path.lexists(p)]
    assert not present, f"outputs left behind: {present}"


def assert_refused(
    result: Result | subprocess.CompletedProcess[str],
    inputs: Inputs,
    *fragments: str,
    absent: Iterable[Path] = (),
    clean: Iterable[Path] = (),
    usage: bool | None = False,
    stdout_ok: bool = False,
) -> str:
    """All three checks of a refused case: the error, no output or temporary left, inputs unchanged."""
    line = assert_error(result, *fragments, usage=usage, stdout_ok=stdout_ok)
    assert_absent(*absent)
    assert_no_temporaries(*clean)
    inputs.assert_unchanged()
    return line


# --------------------------------------------------------------------------------------------------
# running the command line


def cli_run(*args: object) -> Result:
    """`stfusion ARGS` in this process."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def process(
    *args: object, limit: int | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """A real process: `python ARGS` (e.g. `-m stfusion predict ...` or `run.py ...`), optionally under a
    file size limit (RLIMIT_FSIZE, SIGXFSZ ignored)."""
    return subprocess.run(
        [sys.executable, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=ROOT,
        preexec_fn=_file_size_limit(limit) if limit is not None else None,
        check=False,
    )


def cli_in_child(*args: object, limit: int, scratch: Path) -> subprocess.CompletedProcess[str]:
    """`stfusion ARGS` in a forked child process under a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored).

    Forked rather than started: the child has torch and GDAL loaded already (seconds saved per case).
    Its stdout and stderr include what C libraries (GDAL, libtiff) write to the file descriptors.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    streams_at = {name: scratch / name for name in ("fd1", "fd2", "result.json")}
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            for fd, name in ((1, "fd1"), (2, "fd2")):
                os.dup2(os.open(streams_at[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            _file_size_limit(limit)()
            exit_code, out, err = streams(cli_run(*args))
            streams_at["result.json"].write_text(json.dumps([exit_code, out, err]))
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:  # a fork of a threaded process can deadlock: fail, never hang
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child process hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status[1]) == 0, "the child process failed to report"
    exit_code, out, err = json.loads(streams_at["result.json"].read_text())
    result = subprocess.CompletedProcess(
        list(args), exit_code, out + streams_at["fd1"].read_text(), err + streams_at["fd2"].read_text()
    )
    shutil.rmtree(scratch)
    return result


def run_py_in_process(
    argv: Sequence[object], capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """`python run.py ARGV` through its main() in this process."""
    import run  # the repository root is on sys.path (pytest pythonpath)

    capsys.readouterr()
    try:
        code = run.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(argv), 1, captured.out, captured.err + traceback.format_exc())
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), code, captured.out, captured.err)


# --------------------------------------------------------------------------------------------------
# inputs


def dn_scenes(seed: int = 11, height: int = HEIGHT, width: int = WIDTH) -> dict[str, np.ndarray]:
    """fine_t1, coarse_t1, coarse_t2 as int16 reflectance x 1e4 (3, height, width)."""
    rng = np.random.default_rng(seed)
    return {role: random_scene(rng, BANDS, height, width) for role in ("fine_t1", "coarse_t1", "coarse_t2")}


def write_case(folder: Path, seed: int = 11, height: int = HEIGHT, width: int = WIDTH) -> dict[str, Path]:
    """A valid explicit case: int16 x 1e4 GeoTIFFs, fine t1 with nodata -9999."""
    images = dn_scenes(seed, height, width)
    return {
        "fine_t1": write_tif(folder / "fine_20010101.tif", images["fine_t1"], nodata=-9999),
        "coarse_t1": write_tif(folder / "coarse_20010101.tif", images["coarse_t1"]),
        "coarse_t2": write_tif(folder / "coarse_20010201.tif", images["coarse_t2"]),
    }


def predict_args(
    files: dict[str, Path], out: Path, *extra: object, method: str = "coarse-delta"
) -> list[object]:
    args: list[object] = ["predict", "--method", method]
    for role in ("fine_t1", "coarse_t1", "coarse_t2"):
        args += [f"--{role.replace('_', '-')}", files[role]]
    return [*args, "--out", out, *extra]


def paper_data(
    root: Path,
    *,
    train: Sequence[tuple[int, int]] = ((40, 48), (40, 48)),
    val: Sequence[tuple[int, int]] = ((40, 48),),
    test: Sequence[tuple[int, int]] = ((40, 48),),
    seed: int = 7,
) -> Path:
    """Paper layout (train/val/test pair folders), 3 bands, the given sizes (rows, cols) per case."""
    rng = np.random.default_rng(seed)
    names = iter(PAIR_NAMES)
    for split, sizes in (("train", train), ("val", val), ("test", test)):
        for height, width in sizes:
            make_pair_folder(root / split, next(names), rng, bands=BANDS, height=height, width=width)
    return root


def first_test_case(data: Path) -> dict[str, Path]:
    """The images of the first test case of a paper-layout folder, by role."""
    return scenes.discover(data).split("test")[0].paths()


def write_json(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def train_args(data: Path, save: Path, config: Path, *extra: object) -> list[object]:
    return ["train", "--data-dir", data, "--save-dir", save, "--config", config, *TRAIN_FLAGS, *extra]


def tiny_payload(bands: int = BANDS, channels: Sequence[int] = (4, 4, 8, 8, 8)) -> dict[str, Any]:
    """What a valid stfusion checkpoint holds (a tiny seeded MLFF-GAN generator)."""
    torch.manual_seed(0)
    spec = ModelSpec("mlffgan", bands, {"channels": list(channels)})
    checkpoint = Checkpoint(
        model=spec,
        generator=spec.build().state_dict(),
        coarse_factor=1,
        band_names=[f"b{i + 1}" for i in range(bands)],
    )
    return checkpoint.to_payload()


def reference_generator(path: Path) -> Path:
    """A valid reference MLFF-GAN generator .pth (the authors' key names), 3 bands."""
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(export_reference_state_dict(MLFFGenerator(BANDS).state_dict()), path)
    return path


def reference_discriminator(path: Path) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(export_reference_state_dict(PatchDiscriminator(BANDS).state_dict(), "discriminator"), path)
    return path


# ==================================================================================================
# 1. malicious checkpoints: nothing from the file runs, in every command that loads one


class Payload:
    """An object whose unpickling creates ``marker``: what a malicious checkpoint hides."""

    def __init__(self, how: str, marker: Path) -> None:
        self.how, self.marker = how, Path(marker)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.how == "Path.touch":
            return (pathlib.Path.touch, (self.marker,))
        if self.how == "os.system":
            return (os.system, (f"touch {shlex.quote(str(self.marker))}",))
        return (open, (str(self.marker), "w"))  # builtins.open creates the file


def write_pickled(path: Path, content: Any, fmt: str) -> Path:
    """``content`` as a torch.save zip file or a plain pickle file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torch.save":
        torch.save(content, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(content, handle, protocol=2)
    return path


@pytest.mark.parametrize("how", ["Path.touch", "os.system", "builtins.open"])
@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_the_payloads_are_live(tmp_path: Path, fmt: str, how: str) -> None:
    """Sanity check of the attack: an unrestricted unpickler does create the marker."""
    marker = tmp_path / "PWNED"
    path = write_pickled(tmp_path / "evil.ckpt", {"x": Payload(how, marker)}, fmt)
    assert not marker.exists()
    if fmt == "torch.save":
        torch.load(path, weights_only=False)
    else:
        with path.open("rb") as handle:
            pickle.load(handle)  # the point of the test: an unrestricted unpickler
    assert marker.exists()


EVIL_COMMANDS = (
    "predict --checkpoint",
    "test --checkpoint",
    "compare --checkpoint",
    "train --resume",
    "import-reference",
    "import-reference --discriminator",
    "run.py --resume True",  # a real process for torch.save, run.main() in this process for pickle
)


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
@pytest.mark.parametrize("command", EVIL_COMMANDS)
def test_malicious_checkpoint_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, fmt: str
) -> None:
    data = paper_data(tmp_path / "data")
    config = write_json(tmp_path / "tiny.json", TINY_TRAIN_CONFIG)
    marker = tmp_path / "PWNED"
    hook = Payload("Path.touch" if fmt == "torch.save" else "os.system", marker)
    save = tmp_path / "S"
    if command.startswith("import-reference"):
        evil = write_pickled(
            tmp_path / "ckpt" / "evil.pth", {"conv.weight": torch.zeros(1), "hook": hook}, fmt
        )
    else:
        where = save / "last.ckpt" if "resume" in command else tmp_path / "ckpt" / "evil.ckpt"
        # a complete, valid checkpoint, with the payload hidden in its training configuration
        evil = write_pickled(where, {**tiny_payload(), "config": {"hook": hook}}, fmt)
    inputs = Inputs(data, config, evil.parent)
    out = tmp_path / "out"
    files = first_test_case(data)
    if command == "predict --checkpoint":
        result: Any = cli_run(
            *predict_args(files, tmp_path / "pred.tif", "--checkpoint", evil, method="mlffgan")
        )
        absent = [tmp_path / "pred.tif"]
    elif command == "test --checkpoint":
        result, absent = cli_run("test", data, "--checkpoint", evil, "--out", out), [out]
    elif command == "compare --checkpoint":
        args = ("compare", data, "--checkpoint", evil, "--methods", "coarse-delta", "--out", out)
        result, absent = cli_run(*args), [out]
    elif command == "train --resume":
        result, absent = cli_run(*train_args(data, save, config, "--resume")), [save / "best.ckpt"]
    elif command == "import-reference":
        result = cli_run("import-reference", evil, "--bands", BANDS, "--out", tmp_path / "imported.ckpt")
        absent = [tmp_path / "imported.ckpt"]
    elif command == "import-reference --discriminator":
        generator = reference_generator(tmp_path / "ref" / "generator.pth")
        inputs = Inputs(data, config, evil.parent, generator)
        args = ("import-reference", generator, "--discriminator", evil, "--bands", BANDS)
        result = cli_run(*args, "--out", tmp_path / "imported.ckpt")
        absent = [tmp_path / "imported.ckpt"]
    else:
        run_py = ["--data_dir", data, "--save_dir", save, "--resume", "True", "--epochs", "1"]
        run_py += ["--train_patch_size", "16", "--batch_size", "2", "--coarse_factor", "1"]
        run_py += ["--patch_size", "32", "32"]
        if fmt == "torch.save":
            result = process(ROOT / "run.py", *run_py)
        else:
            result = run_py_in_process(run_py, capsys)
        absent = [save / "best.ckpt"]
    assert not marker.exists(), "unpickling the checkpoint ran the attacker's code"
    assert_refused(result, inputs, evil.name, absent=absent, clean=[tmp_path])


def test_malicious_checkpoint_opening_a_file_creates_nothing(tmp_path: Path) -> None:
    files = write_case(tmp_path / "in")
    marker = tmp_path / "PWNED"
    evil = write_pickled(
        tmp_path / "evil.ckpt", {**tiny_payload(), "band_names": [Payload("open", marker)]}, "pickle"
    )
    inputs = Inputs(tmp_path / "in", evil)
    result = cli_run(*predict_args(files, tmp_path / "pred.tif", "--checkpoint", evil, method="mlffgan"))
    assert not marker.exists()
    assert_refused(result, inputs, "evil.ckpt", absent=[tmp_path / "pred.tif"], clean=[tmp_path])


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _replace_by_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _other_size_generator(content: dict[str, Any]) -> dict[str, Any]:
    return {**content, "generator": tiny_payload(channels=(8, 8, 8, 8, 8))["generator"]}


def _model(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda c: {**c, "model": {**c["model"], **changes}}


def _entry(**changes: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda c: {**c, **changes}


def _without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda c: {k: v for k, v in c.items() if k != key}


#: id -> change of a valid checkpoint's content (the result is written with torch.save)
BAD_CHECKPOINT_CONTENTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "no generator entry": _without("generator"),
    "no model entry": _without("model"),
    "no coarse_factor entry": _without("coarse_factor"),
    "no format entry": _without("format"),
    "coarse_factor 'x'": _entry(coarse_factor="x"),
    "coarse_factor 0": _entry(coarse_factor=0),
    "coarse_factor true": _entry(coarse_factor=True),
    "model a list": _entry(model=[1, 2]),
    "model bands 0": _model(bands=0),
    "model bands '3'": _model(bands="3"),
    "model name os.system": _model(name="os.system"),
    "model kwargs unknown": _model(kwargs={"nope": 1}),
    "model kwargs a list": _model(kwargs=[1]),
    "model channels negative": _model(kwargs={"channels": [-4, 4, 8, 8, 8]}),
    "model channels a string": _model(kwargs={"channels": "wide"}),
    "generator holds a string": lambda c: {**c, "generator": {**c["generator"], "extra": "x"}},
    "generator a list": _entry(generator=[1, 2]),
    "generator of another model size": _other_size_generator,
    "generator keys renamed": lambda c: {
        **c,
        "generator": {"module." + k: v for k, v in c["generator"].items()},
    },
    "scale -1": _entry(scale=-1.0),
    "scale 'x'": _entry(scale="x"),
    "band_names numbers": _entry(band_names=[1, 2, 3]),
    "a list, not a dict": lambda c: [1, 2, 3],
    "a bare tensor": lambda c: torch.zeros(3),
}

#: id -> damage to a valid checkpoint file
BAD_CHECKPOINT_FILES: dict[str, Callable[[Path], Any]] = {
    "truncated file": _truncate,
    "empty file": lambda p: p.write_bytes(b""),
    "text file": lambda p: p.write_text("not a checkpoint\n"),
    "folder instead of a file": _replace_by_folder,
    "missing file": lambda p: p.unlink(),
}


@pytest.mark.parametrize("damage", list(BAD_CHECKPOINT_CONTENTS) + list(BAD_CHECKPOINT_FILES))
def test_damaged_checkpoint_is_one_line(tmp_path: Path, damage: str) -> None:
    files = write_case(tmp_path / "in")
    checkpoint = tmp_path / "ckpt" / "model.ckpt"
    if damage in BAD_CHECKPOINT_CONTENTS:
        write_pickled(checkpoint, BAD_CHECKPOINT_CONTENTS[damage](tiny_payload()), "torch.save")
    else:
        write_pickled(checkpoint, tiny_payload(), "torch.save")
        BAD_CHECKPOINT_FILES[damage](checkpoint)
    inputs = Inputs(tmp_path / "in", tmp_path / "ckpt")
    out = tmp_path / "pred.tif"
    result = cli_run(*predict_args(files, out, "--checkpoint", checkpoint, method="mlffgan"))
    assert_refused(result, inputs, "model.ckpt", absent=[out], clean=[tmp_path])


# ==================================================================================================
# 2. nodata of every dtype, GDAL masks and alpha bands


#: id -> (stored dtype, nodata, extra predict flags); values are reflectance x 1e4 unless said
NODATA_KINDS: dict[str, tuple[str, float | None, tuple[str, ...]]] = {
    "float32 NaN (reflectance)": ("float32", float("nan"), ()),
    "float32 -3.4e38 (reflectance)": ("float32", -3.4e38, ()),
    "uint16 65535": ("uint16", 65535, ()),
    "uint8 0 (x100, --fine-scale 0.01)": ("uint8", 0, ("--fine-scale", "0.01")),
    "int16 -9999": ("int16", -9999, ()),
    "int16 without nodata": ("int16", None, ()),
}


def encode_fine(dtype: str, dn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stored values, the reflectance x 1e4 they mean) of a fine image in one NODATA_KINDS dtype."""
    if dtype == "float32":
        stored = (dn * 1e-4).astype(np.float32)
        return stored, stored.astype(np.float64) * 1e4
    if dtype == "uint8":
        stored = np.rint(dn / 100).astype(np.uint8)
        return stored, stored.astype(np.float64) * 100
    stored = dn.astype(dtype)
    return stored, stored.astype(np.float64)


@pytest.mark.parametrize("out_dtype", ["int16", "float32"])
@pytest.mark.parametrize("kind", list(NODATA_KINDS))
def test_nodata_of_every_dtype_is_nodata_in_the_output(tmp_path: Path, kind: str, out_dtype: str) -> None:
    dtype, nodata, extra = NODATA_KINDS[kind]
    images = dn_scenes()
    stored, fine_dn = encode_fine(dtype, images["fine_t1"])
    holes = np.zeros(stored.shape, dtype=bool)
    if nodata is not None:
        holes[:, 2, 3] = True  # missing in every band
        holes[1, 5, 7] = True  # missing in band 2 only
        stored[holes] = np.asarray(nodata).astype(dtype)
    folder = tmp_path / "in"
    files = {
        "fine_t1": write_tif(folder / "fine.tif", stored, nodata=nodata),
        "coarse_t1": write_tif(folder / "coarse_t1.tif", images["coarse_t1"]),
        "coarse_t2": write_tif(folder / "coarse_t2.tif", images["coarse_t2"]),
    }
    inputs = Inputs(folder)
    out = tmp_path / "pred.tif"
    assert_ok(cli_run(*predict_args(files, out, "--dtype", out_dtype, *extra)))
    inputs.assert_unchanged()
    assert_no_temporaries(tmp_path)
    with rasterio.open(out) as src:
        values, out_nodata = src.read().astype(np.float64), src.nodata
        assert src.dtypes[0] == out_dtype
    expected = fine_dn + images["coarse_t2"] - images["coarse_t1"]
    if out_dtype == "float32":
        assert out_nodata is not None and math.isnan(out_nodata), out_nodata
        assert np.isnan(values[holes]).all()
        values = values * 1e4
    else:
        allowed = {-32768.0} | ({float(nodata)} if dtype == "int16" and nodata is not None else set())
        assert out_nodata in allowed or (out_nodata is None and not holes.any()), out_nodata
        assert (values[holes] == out_nodata).all(), values[holes]
    valid = ~holes.any(axis=0)
    # one DN: the prediction is rounded to int16 once; float32 inputs carry ~1e-7 relative error
    assert np.abs(values[:, valid] - expected[:, valid]).max() <= 1


def write_clouded(path: Path, stored: np.ndarray, cloud: np.ndarray, layout: str) -> Path:
    """int16 ``stored`` whose ``cloud`` pixels are marked by a GDAL internal mask or an alpha band."""
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "count": stored.shape[0],
        "height": stored.shape[1],
        "width": stored.shape[2],
        "dtype": "int16",
        "crs": TEST_CRS,
        "transform": TEST_TRANSFORM,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "internal mask":
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
            dst.write(stored)
            dst.write_mask(np.where(cloud, 0, 255).astype(np.uint8))
        assert not Path(f"{path}.msk").exists()
    else:
        alpha = np.where(cloud, 0, 255).astype(np.int16)[None]
        profile["count"] += 1
        with rasterio.open(path, "w", **profile) as dst:
            dst.colorinterp = [
                ColorInterp.gray,
                ColorInterp.undefined,
                ColorInterp.undefined,
                ColorInterp.alpha,
            ]
            dst.write(np.concatenate([stored, alpha]))
    return path


@pytest.mark.parametrize("layout", ["internal mask", "alpha band"])
def test_cloud_marked_by_mask_or_alpha_is_nodata_in_the_output(tmp_path: Path, layout: str) -> None:
    images = dn_scenes()
    cloud = np.zeros((HEIGHT, WIDTH), dtype=bool)
    cloud[3:6, 4:9] = True
    stored = images["fine_t1"].copy()
    stored[:, cloud] = 9999  # cloud fill looks like plausible numbers
    folder = tmp_path / "in"
    files = {
        "fine_t1": write_clouded(folder / "fine.tif", stored, cloud, layout),
        "coarse_t1": write_tif(folder / "coarse_t1.tif", images["coarse_t1"]),
        "coarse_t2": write_tif(folder / "coarse_t2.tif", images["coarse_t2"]),
    }
    inputs = Inputs(folder)
    out = tmp_path / "pred.tif"
    assert_ok(cli_run(*predict_args(files, out)))
    inputs.assert_unchanged()
    assert_no_temporaries(tmp_path)
    with rasterio.open(out) as src:
        values, nodata = src.read(), src.nodata
        assert src.count == BANDS
    assert nodata == -32768
    assert (values[:, cloud] == nodata).all()
    expected = images["fine_t1"].astype(np.int32) + images["coarse_t2"] - images["coarse_t1"]
    assert np.abs(values[:, ~cloud] - expected[:, ~cloud]).max() <= 1


@pytest.mark.parametrize("kind", ["float32 -3.4e38", "uint16 65535", "uint8 0"])
def test_all_nodata_input_is_refused(tmp_path: Path, kind: str) -> None:
    dtype, nodata = {"float32 -3.4e38": ("float32", -3.4e38), "uint16 65535": ("uint16", 65535)}.get(
        kind, ("uint8", 0)
    )
    files = write_case(tmp_path / "in")
    write_tif(files["fine_t1"], np.full((BANDS, HEIGHT, WIDTH), nodata, dtype=dtype), nodata=nodata)
    inputs = Inputs(tmp_path / "in")
    out = tmp_path / "pred.tif"
    result = cli_run(*predict_args(files, out))
    assert_refused(result, inputs, "fine_20010101.tif", "no valid pixel", absent=[out], clean=[tmp_path])


@pytest.mark.parametrize("flag", ["--mask", "--mask-coarse-t2"])
def test_mask_hiding_every_pixel_is_refused(tmp_path: Path, flag: str) -> None:
    files = write_case(tmp_path / "in")
    mask = write_tif(tmp_path / "in" / "mask.tif", np.ones((1, HEIGHT, WIDTH), dtype=np.uint8))
    inputs = Inputs(tmp_path / "in")
    out = tmp_path / "pred.tif"
    result = cli_run(*predict_args(files, out, flag, mask))
    assert_refused(result, inputs, absent=[out], clean=[tmp_path])


# ==================================================================================================
# 3. scale/offset tags, float reflectance and explicit scales: the same reflectance, the same prediction

#: encoding -> (stored values of reflectance x 1e4 ``dn``, nodata, GDAL (scale, offset) tags)
ENCODINGS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float, tuple[float, float] | None]] = {
    "int16 x1e4": (lambda dn: dn.astype(np.int16), -9999, None),
    "int16 x1e4 tagged 1e-4 (MOD09GA)": (lambda dn: dn.astype(np.int16), -9999, (1e-4, 0.0)),
    "uint16 x1e4": (lambda dn: dn.astype(np.uint16), 65535, None),
    "float32 0..1": (lambda dn: (dn * 1e-4).astype(np.float32), float("nan"), None),
    "float32 x1e4": (lambda dn: dn.astype(np.float32), float("nan"), None),
    # Landsat Collection 2 Level-2 surface reflectance: uint16, x 2.75e-5 - 0.2, nodata 0
    "Landsat C2 L2": (lambda dn: np.rint((dn * 1e-4 + 0.2) / 2.75e-5).astype(np.uint16), 0, (2.75e-5, -0.2)),
    # as USGS ships it: the same values without tags (the scale and offset are in its metadata file)
    "Landsat C2 L2 untagged": (lambda dn: np.rint((dn * 1e-4 + 0.2) / 2.75e-5).astype(np.uint16), 0, None),
}

#: id -> (fine encoding, coarse encoding, extra flags, method)
SCALE_VARIANTS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "Landsat C2 L2 fine, int16 coarse": ("Landsat C2 L2", "int16 x1e4", (), "coarse-delta"),
    "Landsat C2 L2 fine: its tags win over --fine-scale 1": (
        "Landsat C2 L2",
        "int16 x1e4",
        ("--fine-scale", "1"),
        "coarse-delta",
    ),
    "MOD09GA-tagged coarse": ("int16 x1e4", "int16 x1e4 tagged 1e-4 (MOD09GA)", (), "coarse-delta"),
    "untagged Landsat C2 L2 fine, --fine-scale and --fine-offset": (
        "Landsat C2 L2 untagged",
        "int16 x1e4",
        ("--fine-scale", "2.75e-5", "--fine-offset", "-0.2"),
        "coarse-delta",
    ),
    "uint16 fine": ("uint16 x1e4", "int16 x1e4", (), "coarse-delta"),
    "float 0..1 everywhere": ("float32 0..1", "float32 0..1", (), "coarse-delta"),
    "float 0..1 everywhere, starfm": ("float32 0..1", "float32 0..1", (), "starfm"),
    "fine x1e4 floats, coarse 0..1 floats, --fine-scale/--coarse-scale": (
        "float32 x1e4",
        "float32 0..1",
        ("--fine-scale", "0.0001", "--coarse-scale", "1"),
        "coarse-delta",
    ),
    "fine x1e4 floats, coarse 0..1 floats, automatic": ("float32 x1e4", "float32 0..1", (), "coarse-delta"),
    "--scale 0.0001 on int16": ("int16 x1e4", "int16 x1e4", ("--scale", "0.0001"), "coarse-delta"),
}


def write_encoded(path: Path, dn: np.ndarray, encoding: str, *, hole: bool) -> Path:
    encode, nodata, tags = ENCODINGS[encoding]
    stored = encode(dn)
    if hole:
        stored[:, 2, 3] = np.asarray(nodata).astype(stored.dtype)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "count": stored.shape[0],
        "height": stored.shape[1],
        "width": stored.shape[2],
        "dtype": str(stored.dtype),
        "crs": TEST_CRS,
        "transform": TEST_TRANSFORM,
        "nodata": nodata,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(stored)
        if tags is not None:
            dst.scales = [tags[0]] * stored.shape[0]
            dst.offsets = [tags[1]] * stored.shape[0]
    return path


def encoded_case(folder: Path, images: dict[str, np.ndarray], fine: str, coarse: str) -> dict[str, Path]:
    return {
        role: write_encoded(
            folder / f"{role}.tif",
            images[role],
            fine if role == "fine_t1" else coarse,
            hole=role == "fine_t1",
        )
        for role in ("fine_t1", "coarse_t1", "coarse_t2")
    }


@pytest.mark.parametrize("variant", list(SCALE_VARIANTS))
def test_the_same_reflectance_stored_otherwise_gives_the_same_prediction(
    tmp_path: Path, variant: str
) -> None:
    fine, coarse, extra, method = SCALE_VARIANTS[variant]
    images = dn_scenes()
    baseline_files = encoded_case(tmp_path / "baseline", images, "int16 x1e4", "int16 x1e4")
    files = encoded_case(tmp_path / "in", images, fine, coarse)
    inputs = Inputs(tmp_path / "baseline", tmp_path / "in")
    assert_ok(cli_run(*predict_args(baseline_files, tmp_path / "baseline.tif", method=method)))
    assert_ok(cli_run(*predict_args(files, tmp_path / "variant.tif", *extra, method=method)))
    inputs.assert_unchanged()
    assert_no_temporaries(tmp_path)
    with rasterio.open(tmp_path / "baseline.tif") as a, rasterio.open(tmp_path / "variant.tif") as b:
        expected, got = a.read(masked=True), b.read(masked=True)
        assert b.dtypes[0] == "int16"
    np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(expected))
    assert np.ma.getmaskarray(got)[:, 2, 3].all()  # the fine image's nodata pixel
    # Landsat C2 L2 stores reflectance in steps of 2.75e-5 = 0.275 DN of x 1e4, so its reflectance is
    # within 0.14 DN of the int16 one: after rounding the outputs differ by at most 1 DN. Float32 inputs
    # carry ~1e-7 relative error, which can flip a rounding only at exact halves: at most 1 DN too.
    diff = np.abs(got.astype(np.int32) - expected.astype(np.int32))
    assert diff.max() <= 1, f"max difference {diff.max()} DN"


def _rmse(path: Path) -> float:
    document = json.loads(path.read_text())
    (method,) = document["methods"].values()
    return float(method["metrics"]["mean"]["rmse"])


@pytest.mark.parametrize(
    "variant",
    [
        "float32 prediction, int16 truth",
        "int16 prediction, float 0..1 truth",
        "int16 prediction, untagged Landsat C2 L2 truth with --truth-scale and --truth-offset",
    ],
)
def test_evaluate_is_the_same_whatever_the_storage(tmp_path: Path, variant: str) -> None:
    files = write_case(tmp_path / "in")
    truth_dn = random_scene(np.random.default_rng(3), BANDS, HEIGHT, WIDTH)
    truth = write_encoded(tmp_path / "in" / "truth.tif", truth_dn, "int16 x1e4", hole=False)
    truth_float = write_encoded(tmp_path / "in" / "truth_float.tif", truth_dn, "float32 0..1", hole=False)
    truth_c2 = write_encoded(tmp_path / "in" / "truth_c2.tif", truth_dn, "Landsat C2 L2 untagged", hole=False)
    inputs = Inputs(tmp_path / "in")
    for dtype in ("int16", "float32"):
        assert_ok(cli_run(*predict_args(files, tmp_path / f"pred_{dtype}.tif", "--dtype", dtype)))
    extra: list[object] = []
    if variant == "float32 prediction, int16 truth":
        runs = [(tmp_path / "pred_int16.tif", truth), (tmp_path / "pred_float32.tif", truth)]
    elif variant == "int16 prediction, float 0..1 truth":
        runs = [(tmp_path / "pred_int16.tif", truth), (tmp_path / "pred_int16.tif", truth_float)]
    else:
        runs = [(tmp_path / "pred_int16.tif", truth), (tmp_path / "pred_int16.tif", truth_c2)]
        extra = ["--truth-scale", "2.75e-5", "--truth-offset", "-0.2"]
    rmse = []
    for number, (pred, true) in enumerate(runs):
        report = tmp_path / f"metrics{number}.json"
        flags = extra if number else []
        assert_ok(cli_run("evaluate", "--pred", pred, "--truth", true, "--json", report, *flags))
        rmse.append(_rmse(report))
    inputs.assert_unchanged()
    assert_no_temporaries(tmp_path)
    # the int16 prediction is the float one rounded to 1e-4: RMSEs differ by less than 0.5e-4
    assert rmse[0] == pytest.approx(rmse[1], abs=1e-4)


# ==================================================================================================
# 4. an output that is an input (or two outputs that are one file)


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Path]:
    """A valid case in tmp_path/in, plus a prediction, a truth and an all-valid mask for evaluate."""
    files = write_case(tmp_path / "in")
    rng = np.random.default_rng(5)
    files["pred"] = write_tif(tmp_path / "in" / "pred.tif", random_scene(rng, BANDS, HEIGHT, WIDTH))
    files["truth"] = write_tif(tmp_path / "in" / "truth.tif", random_scene(rng, BANDS, HEIGHT, WIDTH))
    files["mask"] = write_tif(tmp_path / "in" / "mask.tif", np.zeros((1, HEIGHT, WIDTH), dtype=np.uint8))
    return files


def _symlink(t: Path, f: dict[str, Path]) -> list[object]:
    link = t / "link.tif"
    link.symlink_to(f["coarse_t1"])
    return predict_args(f, link, "--overwrite")


def _hardlink(t: Path, f: dict[str, Path]) -> list[object]:
    link = t / "hard.tif"
    os.link(f["fine_t1"], link)
    return predict_args(f, link, "--overwrite")


def _quality_is_an_input(t: Path, f: dict[str, Path]) -> list[object]:
    fine = t / "in" / "fused_quality.tif"
    shutil.copyfile(f["fine_t1"], fine)
    files = {**f, "fine_t1": fine}
    return predict_args(files, t / "in" / "fused.tif", "--quality", "--overwrite")


def _same_name_targets(t: Path, f: dict[str, Path]) -> list[object]:
    other = t / "in" / "other" / f["coarse_t2"].name
    other.parent.mkdir()
    shutil.copyfile(f["coarse_t1"], other)
    return [*predict_args(f, t / "outdir"), "--coarse-t2", other]


def _folder_target_is_an_input(t: Path, f: dict[str, Path]) -> list[object]:
    named = t / "in" / f"pred_{f['coarse_t2'].stem}.tif"  # what the second target would be called
    shutil.copyfile(f["coarse_t1"], named)
    second = t / "in" / "coarse_20010301.tif"
    shutil.copyfile(f["coarse_t2"], second)
    files = {**f, "coarse_t1": named}
    return [*predict_args(files, t / "in", "--overwrite"), "--coarse-t2", second]


def _import_onto(part: str) -> Callable[[Path, dict[str, Path]], list[object]]:
    def build(t: Path, f: dict[str, Path]) -> list[object]:
        generator = reference_generator(t / "in" / "generator.pth")
        discriminator = reference_discriminator(t / "in" / "discriminator.pth")
        out = generator if part == "generator" else discriminator
        args: list[object] = ["import-reference", generator, "--discriminator", discriminator]
        return [*args, "--bands", BANDS, "--out", out, "--overwrite"]

    return build


def _evaluate(f: dict[str, Path], *extra: object) -> list[object]:
    return ["evaluate", "--pred", f["pred"], "--truth", f["truth"], *extra]


SAME_FILE_CASES: dict[str, Callable[[Path, dict[str, Path]], list[object]]] = {
    "--out is fine t1": lambda t, f: predict_args(f, f["fine_t1"]),
    "--out is fine t1, --overwrite": lambda t, f: predict_args(f, f["fine_t1"], "--overwrite"),
    "--out is coarse t2, --overwrite": lambda t, f: predict_args(f, f["coarse_t2"], "--overwrite"),
    "--out is fine t1 spelled with ..": lambda t, f: predict_args(
        f, t / "in" / ".." / "in" / f["fine_t1"].name, "--overwrite"
    ),
    "--out is a symlink to coarse t1, --overwrite": _symlink,
    "--out is a hard link to fine t1, --overwrite": _hardlink,
    "--out is the --mask, --overwrite": lambda t, f: predict_args(
        f, f["mask"], "--mask", f["mask"], "--overwrite"
    ),
    "--quality band would replace an input": _quality_is_an_input,
    "two --coarse-t2 of one name in two folders": _same_name_targets,
    "a folder target is an input, --overwrite": _folder_target_is_an_input,
    "evaluate --csv X --json X": lambda t, f: _evaluate(f, "--csv", t / "m.txt", "--json", t / "m.txt"),
    "evaluate --json is the CSV's sidecar": lambda t, f: _evaluate(
        f, "--csv", t / "m.csv", "--json", t / "m.conventions.json"
    ),
    "evaluate --json is the truth, --overwrite": lambda t, f: _evaluate(
        f, "--json", f["truth"], "--overwrite"
    ),
    "evaluate --csv is the prediction, --overwrite": lambda t, f: _evaluate(
        f, "--csv", f["pred"], "--overwrite"
    ),
    "evaluate --json is the --mask, --overwrite": lambda t, f: _evaluate(
        f, "--mask", f["mask"], "--json", f["mask"], "--overwrite"
    ),
    "import-reference --out is the generator, --overwrite": _import_onto("generator"),
    "import-reference --out is the discriminator, --overwrite": _import_onto("discriminator"),
}


@pytest.mark.parametrize("label", list(SAME_FILE_CASES))
def test_an_output_never_replaces_an_input(tmp_path: Path, workspace: dict[str, Path], label: str) -> None:
    args = SAME_FILE_CASES[label](tmp_path, workspace)
    inputs = Inputs(tmp_path / "in", *(p for p in tmp_path.glob("*.tif")))
    result = cli_run(*args)
    absent = [tmp_path / name for name in ("outdir", "m.txt", "m.csv", "m.conventions.json")]
    assert_refused(result, inputs, absent=absent, clean=[tmp_path])


# ==================================================================================================
# 5. concurrent writers, stale temporaries of killed runs, --skip-existing


def test_two_processes_writing_one_output_exactly_one_wins(tmp_path: Path) -> None:
    files = write_case(tmp_path / "in", height=256, width=256)
    inputs = Inputs(tmp_path / "in")
    out = tmp_path / "pred.tif"
    command = [sys.executable, "-m", "stfusion", *(str(a) for a in predict_args(files, out))]
    runs = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT
        )
        for _ in range(2)
    ]
    results = []
    for run in runs:
        out_text, err_text = run.communicate(timeout=240)
        results.append(subprocess.CompletedProcess(command, run.returncode, out_text, err_text))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [streams(r) for r in results]
    loser = next(r for r in results if r.returncode == 2)
    assert_error(loser, "pred.tif")
    with rasterio.open(out) as src:
        assert src.shape == (256, 256) and src.count == BANDS
        assert np.isfinite(src.read()).all()
    assert_no_temporaries(tmp_path)
    inputs.assert_unchanged()


@pytest.mark.parametrize("command", ["predict", "compare"])
def test_output_published_by_another_run_meanwhile_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Deterministic form of the race above: the other run publishes the output after this run checked
    that it does not exist, while this one reads its inputs. This run must fail (exit 2, one line) and
    leave the other run's file as it is."""
    from stfusion import workflows

    if command == "predict":
        files = write_case(tmp_path / "in")
        target = tmp_path / "pred.tif"
        args = predict_args(files, target)
    else:
        data = paper_data(tmp_path / "in", train=(), val=(), test=((24, 32),))
        target = tmp_path / "cmp" / PAIR_NAMES[0] / "coarse-delta.tif"
        args = ["compare", data, "--methods", "coarse-delta", "--out", tmp_path / "cmp"]
    inputs = Inputs(tmp_path / "in")
    theirs = write_tif(
        tmp_path / "theirs.tif", random_scene(np.random.default_rng(9), BANDS, HEIGHT, WIDTH)
    ).read_bytes()

    class OtherRunFinishesNow(workflows.CaseReader):  # type: ignore[misc,valid-type]
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(theirs)

    monkeypatch.setattr(workflows, "CaseReader", OtherRunFinishesNow)
    result = cli_run(*args)
    assert_refused(result, inputs, target.name, clean=[tmp_path])
    assert target.read_bytes() == theirs, "this run replaced the output another run had published"


def _host() -> str:
    """The host as the package writes it in temporary names (see stfusion.atomic)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32] or "host"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("suffix", [".part", ".part.gtiff"])
def test_stale_temporary_of_a_killed_run_is_removed(tmp_path: Path, suffix: str) -> None:
    files = write_case(tmp_path / "in")
    inputs = Inputs(tmp_path / "in")
    out = tmp_path / "pred.tif"
    stale = tmp_path / f".{out.name}.{_host()}.{_dead_pid()}.0badc0de{suffix}"
    assert temporary_pattern(out).match(stale.name), "the test must name it as the package does"
    stale.write_bytes(b"half a GeoTIFF")
    extra = ["--cog"] if suffix.endswith("gtiff") else []
    assert_ok(cli_run(*predict_args(files, out, *extra)))
    assert not stale.exists()
    assert_no_temporaries(tmp_path)
    inputs.assert_unchanged()
    with rasterio.open(out) as src:
        assert src.count == BANDS


def test_temporary_of_a_live_run_is_kept(tmp_path: Path) -> None:
    files = write_case(tmp_path / "in")
    inputs = Inputs(tmp_path / "in")
    out = tmp_path / "pred.tif"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".{out.name}.{_host()}.{sleeper.pid}.0c0ffee0.part"
        live.write_bytes(b"being written")
        assert_ok(cli_run(*predict_args(files, out)))
        assert live.read_bytes() == b"being written"
    finally:
        sleeper.kill()
        sleeper.wait()
    live.unlink()
    assert_no_temporaries(tmp_path)
    inputs.assert_unchanged()


@pytest.mark.parametrize("existing", ["empty file", "truncated GeoTIFF", "text file", "complete output"])
def test_skip_existing_redoes_unusable_outputs(tmp_path: Path, existing: str) -> None:
    files = write_case(tmp_path / "in")
    inputs = Inputs(tmp_path / "in")
    out = tmp_path / "pred.tif"
    assert_ok(cli_run(*predict_args(files, tmp_path / "reference.tif")))
    complete = (tmp_path / "reference.tif").read_bytes()
    out.write_bytes(
        {"empty file": b"", "truncated GeoTIFF": complete[: len(complete) // 3], "text file": b"hello\n"}.get(
            existing, complete
        )
    )
    kept = existing == "complete output"
    before = out.stat().st_ino
    output = assert_ok(cli_run(*predict_args(files, out, "--skip-existing")))
    assert ("skipped" in output) == kept, output
    assert out.read_bytes() == complete  # redone: the same prediction; kept: untouched
    assert (out.stat().st_ino == before) == kept
    if kept:  # kept for another method: said so
        other = assert_ok(cli_run(*predict_args(files, out, "--skip-existing", method="persistence")))
        assert "(exists; made by coarse-delta, not persistence (--overwrite redoes it))" in other, other
    assert_no_temporaries(tmp_path)
    inputs.assert_unchanged()


# ==================================================================================================
# 6. disk full and other write failures


def noise_case(folder: Path, size: int = 256) -> dict[str, Path]:
    """A case of incompressible noise: its int16 prediction is about 2 bytes per pixel and band."""
    rng = np.random.default_rng(0)
    return {
        role: write_tif(folder / f"{role}.tif", rng.integers(500, 4000, (BANDS, size, size)).astype(np.int16))
        for role in ("fine_t1", "coarse_t1", "coarse_t2")
    }


@pytest.mark.parametrize("layout", ["GTiff", "COG"])
def test_file_size_limit_is_one_line_and_leaves_nothing(tmp_path: Path, layout: str) -> None:
    files = noise_case(tmp_path / "in")
    inputs = Inputs(tmp_path / "in")
    out = tmp_path / "out" / "pred.tif"
    out.parent.mkdir()
    extra = ["--cog"] if layout == "COG" else []
    result = cli_in_child(*predict_args(files, out, *extra), limit=64 * 1024, scratch=tmp_path / "child")
    assert_refused(result, inputs, str(out), absent=[out], clean=[tmp_path])
    assert list((tmp_path / "out").iterdir()) == []


def test_file_size_limit_during_a_checkpoint_save_keeps_the_previous_one(
    tmp_path: Path, trained: TrainedRun
) -> None:
    save = trained.copy_to(tmp_path / "S")
    inputs = Inputs(trained.data, trained.config, save / "last.ckpt")
    args = train_args(trained.data, save, trained.config, "--resume", "--epochs", "2")
    # a real process: a fork of this process, which has run torch, can deadlock in torch's thread pools
    result = process("-m", "stfusion", *args, limit=2 << 20)
    assert_refused(result, inputs, "last.ckpt", clean=[save], stdout_ok=True)
    assert load_checkpoint(save / "last.ckpt").epoch == 1


def test_read_only_output_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: a folder's permissions do not stop root from writing in it")
    files = write_case(tmp_path / "in")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    inputs = Inputs(tmp_path / "in")
    try:
        result = cli_run(*predict_args(files, folder / "pred.tif"))
        assert_refused(result, inputs, "not writable", absent=[folder / "pred.tif"], clean=[tmp_path])
    finally:
        folder.chmod(0o755)


def test_out_an_existing_folder_writes_inside_it(tmp_path: Path) -> None:
    """`--out` help: "Output GeoTIFF; a folder ... (pred_<coarse name>.tif)": a folder gets the file."""
    files = write_case(tmp_path / "in")
    inputs = Inputs(tmp_path / "in")
    folder = tmp_path / "results"
    folder.mkdir()
    assert_ok(cli_run(*predict_args(files, folder)))
    assert sorted(p.name for p in folder.iterdir()) == [f"pred_{files['coarse_t2'].stem}.tif"]
    with rasterio.open(folder / f"pred_{files['coarse_t2'].stem}.tif") as src:
        assert src.count == BANDS
    assert_no_temporaries(tmp_path)
    inputs.assert_unchanged()


LONG = "x" * 300


def _file(path: Path) -> Path:
    path.write_text("a file\n")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


#: id -> (args from (tmp_path, workspace files), outputs that must not appear)
BAD_OUTPUTS: dict[str, Callable[[Path, dict[str, Path]], tuple[list[object], list[Path]]]] = {
    "--out an existing folder named x.tif": lambda t, f: (
        predict_args(f, _folder(t / "x.tif")),
        [t / "x.tif" / f"pred_{f['coarse_t2'].stem}.tif"],
    ),
    "--out a 300-character name": lambda t, f: (predict_args(f, t / f"{LONG}.tif"), []),
    "--out x.jp2 in a new folder": lambda t, f: (predict_args(f, t / "new" / "x.jp2"), [t / "new"]),
    "--out in a missing folder": lambda t, f: (predict_args(f, t / "missing" / "x.tif"), [t / "missing"]),
    "several dates, --out a file": lambda t, f: (
        [*predict_args(f, _file(t / "taken")), "--coarse-t2", f["coarse_t1"]],
        [],
    ),
    "evaluate --json a 300-character name": lambda t, f: (_evaluate(f, "--json", t / f"{LONG}.json"), []),
    "import-reference --out a 300-character name": lambda t, f: (
        [
            "import-reference",
            reference_generator(t / "in" / "g.pth"),
            "--bands",
            BANDS,
            "--out",
            t / f"{LONG}.ckpt",
        ],
        [],
    ),
    "compare --out is a file": lambda t, f: (
        ["compare", paper_data(t / "in" / "data"), "--methods", "coarse-delta", "--out", _file(t / "cmp")],
        [],
    ),
    "test --out is a file": lambda t, f: (
        ["test", paper_data(t / "in" / "data"), "--checkpoint", _checkpoint(t), "--out", _file(t / "tst")],
        [],
    ),
    "train --save-dir is a file": lambda t, f: (
        train_args(
            paper_data(t / "in" / "data"),
            _file(t / "run"),
            write_json(t / "in" / "tiny.json", TINY_TRAIN_CONFIG),
        ),
        [],
    ),
}


def _checkpoint(t: Path) -> Path:
    return write_pickled(t / "in" / "model.ckpt", tiny_payload(), "torch.save")


@pytest.mark.parametrize("label", list(BAD_OUTPUTS))
def test_unwritable_output_is_one_line(tmp_path: Path, workspace: dict[str, Path], label: str) -> None:
    args, absent = BAD_OUTPUTS[label](tmp_path, workspace)
    inputs = Inputs(*sorted(tmp_path.iterdir()))
    result = cli_run(*args)
    assert_refused(result, inputs, absent=absent, clean=[tmp_path])


# ==================================================================================================
# 7. option ranges: refused where they are parsed, before any work


@dataclass
class Ctx:
    tmp: Path

    @cached_property
    def files(self) -> dict[str, Path]:
        return write_case(self.tmp / "in")

    @cached_property
    def data(self) -> Path:
        return paper_data(self.tmp / "in" / "data")

    @cached_property
    def config(self) -> Path:
        return write_json(self.tmp / "in" / "tiny.json", TINY_TRAIN_CONFIG)

    @property
    def out(self) -> Path:
        return self.tmp / "pred.tif"

    @property
    def save(self) -> Path:
        return self.tmp / "S"

    def predict(self, *extra: object, method: str = "coarse-delta") -> list[object]:
        return predict_args(self.files, self.out, *extra, method=method)

    def train(self, *extra: object) -> list[object]:
        return train_args(self.data, self.save, self.config, *extra)

    def train_config(self, content: Any) -> list[object]:
        path = self.tmp / "in" / "bad.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return ["train", "--data-dir", self.data, "--save-dir", self.save, "--config", path]

    def evaluate(self, *extra: object) -> list[object]:
        f = self.files
        return [
            "evaluate",
            "--pred",
            f["fine_t1"],
            "--truth",
            f["coarse_t2"],
            "--json",
            self.tmp / "m.json",
            *extra,
        ]


OPTION_CASES: dict[str, Callable[[Ctx], list[object]]] = {
    "--tile 0 0": lambda c: c.predict("--tile", "0", "0"),
    "--tile 8 8": lambda c: c.predict("--tile", "8", "8"),
    "--overlap -5": lambda c: c.predict("--overlap", "-5"),
    "--overlap >= --tile": lambda c: c.predict("--tile", "16", "16", "--overlap", "16"),
    "--batch-size 0": lambda c: c.predict("--batch-size", "0"),
    "predict --device cuda (no CUDA here)": lambda c: c.predict("--device", "cuda"),
    "predict --device tpu": lambda c: c.predict("--device", "tpu"),
    "predict --device cuda:7": lambda c: c.predict("--device", "cuda:7"),
    "predict --device ''": lambda c: c.predict("--device", ""),
    "--option unknown key": lambda c: c.predict("--option", "nope=1"),
    "--option without =": lambda c: c.predict("--option", "window_size", method="starfm"),
    "--option window_size=abc": lambda c: c.predict("--option", "window_size=abc", method="starfm"),
    "--option window_size=0": lambda c: c.predict("--option", "window_size=0", method="starfm"),
    "--option window_size=-3": lambda c: c.predict("--option", "window_size=-3", method="starfm"),
    "--option n_classes=0": lambda c: c.predict("--option", "n_classes=0", method="starfm"),
    "--option preset=nope": lambda c: c.predict("--option", "preset=nope", method="starfm"),
    "fsdaf --option scale_factor=0": lambda c: c.predict("--option", "scale_factor=0", method="fsdaf"),
    "--scale 0": lambda c: c.predict("--scale", "0"),
    "--scale -1": lambda c: c.predict("--scale", "-1"),
    "--scale nan": lambda c: c.predict("--scale", "nan"),
    "--fine-scale inf": lambda c: c.predict("--fine-scale", "inf"),
    "--resampling sinc": lambda c: c.predict("--resampling", "sinc"),
    "--min-overlap 2": lambda c: c.predict("--min-overlap", "2"),
    "--min-overlap -0.1": lambda c: c.predict("--min-overlap", "-0.1"),
    "--dtype uint8": lambda c: c.predict("--dtype", "uint8"),
    "mlffgan without --checkpoint": lambda c: c.predict(method="mlffgan"),
    "--fine-t3 without --coarse-t3": lambda c: c.predict("--fine-t3", c.files["fine_t1"]),
    "--threads 0": lambda c: ["--threads", "0", *c.predict()],
    "train --lr -1": lambda c: c.train("--lr", "-1"),
    "train --lr 0": lambda c: c.train("--lr", "0"),
    "train --lr nan": lambda c: c.train("--lr", "nan"),
    "train --patch-size 0": lambda c: c.train("--patch-size", "0"),
    "train --patch-size 8": lambda c: c.train("--patch-size", "8"),
    "train --coarse-factor 0": lambda c: c.train("--coarse-factor", "0"),
    "train --epochs 0": lambda c: c.train("--epochs", "0"),
    "train --batch-size 0": lambda c: c.train("--batch-size", "0"),
    "train --val-holdout 0.95": lambda c: c.train("--val-holdout", "0.95"),
    "train --device cuda": lambda c: c.train("--device", "cuda"),
    "train --device tpu": lambda c: c.train("--device", "tpu"),
    "train --config [1,2]": lambda c: c.train_config([1, 2]),
    "train --config null": lambda c: c.train_config(None),
    'train --config {"epochs": "x"}': lambda c: c.train_config({"epochs": "x"}),
    'train --config {"epochs": true}': lambda c: c.train_config({"epochs": True}),
    'train --config {"nope": 1}': lambda c: c.train_config({"nope": 1}),
    'train --config {"lr": -1}': lambda c: c.train_config({"lr": -1}),
    'train --config {"channels": []}': lambda c: c.train_config({"channels": []}),
    'train --config {"betas": [2, 0.999]}': lambda c: c.train_config({"betas": [2, 0.999]}),
    "train --config not JSON": lambda c: c.train_config("{epochs: 1"),
    "sample into an existing file": lambda c: ["sample", "cia-crop", c.files["fine_t1"]],
    "cases --to-paper-layout into the data folder": lambda c: ["cases", c.data, "--to-paper-layout", c.data],
    "cases --to-paper-layout onto a file": lambda c: [
        "cases",
        c.data,
        "--to-paper-layout",
        c.files["fine_t1"],
    ],
    'train --config {"device": "tpu"}': lambda c: c.train_config({"device": "tpu"}),
    'train --config {"device": "cuda"} (no CUDA here)': lambda c: c.train_config({"device": "cuda"}),
    'train --config {"val_tile": [16]}': lambda c: c.train_config({"val_tile": [16]}),
    'train --config {"weights": {"l1": "x"}}': lambda c: c.train_config({"weights": {"l1": "x"}}),
    'train --config {"weights": {"l1": -1}}': lambda c: c.train_config({"weights": {"l1": -1}}),
    'train --config {"fine_bands": "abc"}': lambda c: c.train_config({"fine_bands": "abc"}),
    'train --config {"fine_bands": [1.5]}': lambda c: c.train_config({"fine_bands": [1.5]}),
    'train --config {"fine_scale": "x"}': lambda c: c.train_config({"fine_scale": "x"}),
    "import-reference --bands 0": lambda c: [
        "import-reference",
        c.tmp / "in" / "g.pth",
        "--bands",
        "0",
        "--out",
        c.out,
    ],
    "import-reference --coarse-factor 0": lambda c: [
        "import-reference",
        c.tmp / "in" / "g.pth",
        "--bands",
        "3",
        "--coarse-factor",
        "0",
        "--out",
        c.out,
    ],
    "evaluate --ratio 0": lambda c: c.evaluate("--ratio", "0"),
    "evaluate --ratio -1": lambda c: c.evaluate("--ratio", "-1"),
    "evaluate --ratio nan": lambda c: c.evaluate("--ratio", "nan"),
    "evaluate --data-range 0": lambda c: c.evaluate("--data-range", "0"),
    "compare --methods nope": lambda c: ["compare", c.data, "--methods", "nope", "--out", c.tmp / "cmp"],
    "compare --methods ,": lambda c: ["compare", c.data, "--methods", ",", "--out", c.tmp / "cmp"],
    "compare --methods with a two-pair method, one pair per case": lambda c: [
        "compare",
        c.data,
        "--methods",
        "coarse-delta,estarfm",
        "--out",
        c.tmp / "cmp",
    ],
    "test --split nope": lambda c: [
        "test",
        c.data,
        "--checkpoint",
        _checkpoint(c.tmp),
        "--split",
        "nope",
        "--out",
        c.tmp / "tst",
    ],
    "test --baselines nope": lambda c: [
        "test",
        c.data,
        "--checkpoint",
        _checkpoint(c.tmp),
        "--baselines",
        "nope",
        "--out",
        c.tmp / "tst",
    ],
}


@pytest.mark.parametrize("label", list(OPTION_CASES))
def test_option_out_of_range_is_refused_before_any_work(tmp_path: Path, label: str) -> None:
    ctx = Ctx(tmp_path)
    args = OPTION_CASES[label](ctx)
    (tmp_path / "in").mkdir(exist_ok=True)
    if "import-reference" in label:
        reference_generator(tmp_path / "in" / "g.pth")
    inputs = Inputs(tmp_path / "in")
    result = cli_run(*args)
    outputs = [ctx.out, ctx.save, tmp_path / "m.json", tmp_path / "cmp", tmp_path / "tst"]
    assert_refused(result, inputs, absent=outputs, clean=[tmp_path], usage=None)


# ==================================================================================================
# 8. tiny and mixed-size images


def test_evaluate_on_5x5_images_says_the_minimum_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pred = write_tif(tmp_path / "in" / "pred.tif", random_scene(rng, BANDS, 5, 5))
    truth = write_tif(tmp_path / "in" / "truth.tif", random_scene(rng, BANDS, 5, 5))
    inputs = Inputs(tmp_path / "in")
    result = cli_run("evaluate", "--pred", pred, "--truth", truth, "--json", tmp_path / "m.json")
    assert_refused(result, inputs, "at least", absent=[tmp_path / "m.json"], clean=[tmp_path])


def test_compare_on_5x5_images_says_the_minimum_size(tmp_path: Path) -> None:
    data = paper_data(tmp_path / "in", train=(), val=(), test=((5, 5),))
    inputs = Inputs(data)
    out = tmp_path / "cmp"
    result = cli_run("compare", data, "--methods", "coarse-delta,persistence", "--out", out)
    tables = [out / f"comparison.{suffix}" for suffix in ("csv", "json", "md")]
    assert_refused(result, inputs, "at least", absent=tables, clean=[tmp_path])


@pytest.mark.parametrize("how", ["--mask hides every pixel", "the prediction is all nodata"])
def test_evaluate_with_no_valid_pixel_is_refused(tmp_path: Path, how: str) -> None:
    rng = np.random.default_rng(1)
    truth = write_tif(tmp_path / "in" / "truth.tif", random_scene(rng, BANDS, HEIGHT, WIDTH))
    mask = write_tif(tmp_path / "in" / "mask.tif", np.ones((1, HEIGHT, WIDTH), dtype=np.uint8))
    if how == "--mask hides every pixel":
        pred = write_tif(tmp_path / "in" / "pred.tif", random_scene(rng, BANDS, HEIGHT, WIDTH))
        extra: list[object] = ["--mask", mask]
    else:
        pred = write_tif(
            tmp_path / "in" / "pred.tif", np.full((BANDS, HEIGHT, WIDTH), -32768, np.int16), nodata=-32768
        )
        extra = []
    inputs = Inputs(tmp_path / "in")
    result = cli_run("evaluate", "--pred", pred, "--truth", truth, "--json", tmp_path / "m.json", *extra)
    assert_refused(result, inputs, absent=[tmp_path / "m.json"], clean=[tmp_path])


def test_training_images_smaller_than_the_patch_say_the_largest_that_fits(tmp_path: Path) -> None:
    data = paper_data(tmp_path / "in" / "data", train=((20, 24), (20, 24)), val=((20, 24),), test=((20, 24),))
    config = write_json(tmp_path / "in" / "tiny.json", TINY_TRAIN_CONFIG)
    inputs = Inputs(tmp_path / "in")
    save = tmp_path / "S"
    result = cli_run(*train_args(data, save, config, "--patch-size", "32"))
    assert_refused(result, inputs, "--patch-size 20", absent=[save], clean=[tmp_path])


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param({"train": ((40, 48), (56, 64))}, id="training cases of two sizes"),
        pytest.param({"val": ((20, 24),), "test": ((24, 28),)}, id="val and test smaller than the patch"),
    ],
)
def test_training_on_mixed_sizes_works(tmp_path: Path, sizes: dict[str, Any]) -> None:
    data = paper_data(tmp_path / "in" / "data", **sizes)
    config = write_json(tmp_path / "in" / "tiny.json", TINY_TRAIN_CONFIG)
    inputs = Inputs(tmp_path / "in")
    save = tmp_path / "S"
    assert_ok(cli_run(*train_args(data, save, config, "--patch-size", "32")))
    assert load_checkpoint(save / "last.ckpt").epoch == 1
    assert (save / "test" / "metrics.csv").exists()
    assert_no_temporaries(tmp_path)
    inputs.assert_unchanged()


def test_compare_on_cases_of_different_sizes_works(tmp_path: Path) -> None:
    data = paper_data(tmp_path / "in", train=(), val=(), test=((24, 32), (40, 48)))
    inputs = Inputs(data)
    out = tmp_path / "cmp"
    assert_ok(cli_run("compare", data, "--methods", "coarse-delta,persistence", "--out", out))
    assert (out / "comparison.csv").exists()
    assert_no_temporaries(tmp_path)
    inputs.assert_unchanged()


@pytest.mark.parametrize(("method", "size"), [("coarse-delta", 1), ("persistence", 2), ("starfm", 5)])
def test_predict_on_tiny_images_works(tmp_path: Path, method: str, size: int) -> None:
    files = write_case(tmp_path / "in", height=size, width=size)
    inputs = Inputs(tmp_path / "in")
    out = tmp_path / "pred.tif"
    assert_ok(cli_run(*predict_args(files, out, method=method)))
    with rasterio.open(out) as src:
        assert src.shape == (size, size) and src.count == BANDS
    assert_no_temporaries(tmp_path)
    inputs.assert_unchanged()


# ==================================================================================================
# 9. a training run and its resume


@dataclass
class TrainedRun:
    data: Path
    config: Path
    save: Path

    def copy_to(self, target: Path) -> Path:
        shutil.copytree(self.save, target)
        return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One finished epoch of a tiny run (tests copy its folder before touching it)."""
    root = tmp_path_factory.mktemp("trained")
    data = paper_data(root / "data")
    config = write_json(root / "tiny.json", TINY_TRAIN_CONFIG)
    save = root / "S"
    assert_ok(cli_run(*train_args(data, save, config)))
    return TrainedRun(data, config, save)


#: id -> (changed flags, the option the error must name)
RESUME_CHANGES: dict[str, tuple[tuple[str, ...], str]] = {
    "--lr": (("--lr", "0.001"), "lr"),
    "--coarse-factor": (("--coarse-factor", "2"), "coarse_factor"),
    "--patch-size": (("--patch-size", "32"), "patch_size"),
    "--batch-size": (("--batch-size", "1"), "batch_size"),
    "--seed": (("--seed", "3"), "seed"),
    "--residual": (("--residual",), "residual"),
    "--no-date-swap": (("--no-date-swap",), "date_swap"),
}


@pytest.mark.parametrize("change", list(RESUME_CHANGES))
def test_resume_with_another_setting_names_it(tmp_path: Path, trained: TrainedRun, change: str) -> None:
    flags, name = RESUME_CHANGES[change]
    save = trained.copy_to(tmp_path / "S")
    inputs = Inputs(trained.data, trained.config, save)
    result = cli_run(*train_args(trained.data, save, trained.config, "--resume", *flags))
    assert_refused(result, inputs, name, clean=[save])


def test_resume_with_other_training_data_names_it(tmp_path: Path, trained: TrainedRun) -> None:
    save = trained.copy_to(tmp_path / "S")
    data = tmp_path / "data"
    shutil.copytree(trained.data, data)
    make_pair_folder(
        data / "train", PAIR_NAMES[4], np.random.default_rng(2), bands=BANDS, height=40, width=48
    )
    inputs = Inputs(data, trained.config, save)
    result = cli_run(*train_args(data, save, trained.config, "--resume"))
    assert_refused(result, inputs, "data", clean=[save])


def test_resume_with_more_epochs_works(tmp_path: Path, trained: TrainedRun) -> None:
    save = trained.copy_to(tmp_path / "S")
    inputs = Inputs(trained.data, trained.config)
    assert_ok(cli_run(*train_args(trained.data, save, trained.config, "--resume", "--epochs", "2")))
    last = load_checkpoint(save / "last.ckpt")
    assert last.epoch == 2 and [h["epoch"] for h in last.history] == [1, 2]
    assert_no_temporaries(save)
    inputs.assert_unchanged()


def test_resume_of_a_finished_run_with_the_same_epochs_works(tmp_path: Path, trained: TrainedRun) -> None:
    save = trained.copy_to(tmp_path / "S")
    inputs = Inputs(trained.data, trained.config, save / "last.ckpt", save / "best.ckpt")
    assert_ok(cli_run(*train_args(trained.data, save, trained.config, "--resume")))
    assert_no_temporaries(save)
    inputs.assert_unchanged()


@pytest.mark.parametrize("damage", ["best.ckpt copied over last.ckpt", "truncated last.ckpt"])
def test_resume_from_an_unusable_last_checkpoint_is_one_line(
    tmp_path: Path, trained: TrainedRun, damage: str
) -> None:
    save = trained.copy_to(tmp_path / "S")
    if damage == "truncated last.ckpt":
        _truncate(save / "last.ckpt")
        fragment = "last.ckpt"
    else:
        shutil.copyfile(save / "best.ckpt", save / "last.ckpt")
        fragment = "optimiser"
    inputs = Inputs(trained.data, trained.config, save)
    result = cli_run(*train_args(trained.data, save, trained.config, "--resume"))
    assert_refused(result, inputs, fragment, clean=[save])


def test_training_into_a_run_folder_needs_resume_or_overwrite(tmp_path: Path, trained: TrainedRun) -> None:
    save = trained.copy_to(tmp_path / "S")
    inputs = Inputs(trained.data, trained.config, save)
    result = cli_run(*train_args(trained.data, save, trained.config))
    assert_refused(result, inputs, "--resume", "--overwrite", clean=[save])


def test_resume_and_overwrite_together_is_one_line(tmp_path: Path, trained: TrainedRun) -> None:
    save = trained.copy_to(tmp_path / "S")
    inputs = Inputs(trained.data, trained.config, save)
    result = cli_run(*train_args(trained.data, save, trained.config, "--resume", "--overwrite"))
    assert_refused(result, inputs, "--resume", "--overwrite", clean=[save])


def test_overwrite_replaces_the_run(tmp_path: Path, trained: TrainedRun) -> None:
    save = trained.copy_to(tmp_path / "S")
    old = (save / "last.ckpt").stat().st_ino
    inputs = Inputs(trained.data, trained.config)
    assert_ok(cli_run(*train_args(trained.data, save, trained.config, "--overwrite", "--lr", "0.001")))
    assert (save / "last.ckpt").stat().st_ino != old
    last = load_checkpoint(save / "last.ckpt")
    assert last.epoch == 1 and last.config["lr"] == 0.001
    assert_no_temporaries(save)
    inputs.assert_unchanged()


def test_resume_without_a_run_starts_one(tmp_path: Path, trained: TrainedRun) -> None:
    save = tmp_path / "S"
    inputs = Inputs(trained.data, trained.config)
    assert_ok(cli_run(*train_args(trained.data, save, trained.config, "--resume")))
    assert load_checkpoint(save / "last.ckpt").epoch == 1
    assert_no_temporaries(save)
    inputs.assert_unchanged()

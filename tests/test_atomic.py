"""Atomic writes: complete file or nothing, with ordinary permissions."""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stfusion import atomic
from stfusion.atomic import OutputError, atomic_path
from stfusion.errors import InputError, OutputExistsError, StfusionError


def test_success_renames_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    previous = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.")
            tmp.write_text("done")
    finally:
        os.umask(previous)
    assert target.read_text() == "done"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failure_leaves_the_target_untouched_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


# --------------------------------------------------------------------------------------------------
# failures leave nothing, publication without overwrite is exclusive, stale temporaries are cleaned


def test_failing_rename_removes_the_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.txt"

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "replace", broken_replace)
    with (
        pytest.raises(OutputError, match=r"out\.txt: cannot write \(Input/output error\)"),
        atomic_path(target) as tmp,
    ):
        tmp.write_text("done")
    assert list(tmp_path.iterdir()) == []


def test_exclusive_publication_second_writer_fails_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    first, second = atomic_path(target, overwrite=False), atomic_path(target, overwrite=False)
    first_tmp, second_tmp = first.__enter__(), second.__enter__()  # two runs started before either ended
    assert first_tmp != second_tmp
    first_tmp.write_text("first")
    second_tmp.write_text("second")
    first.__exit__(None, None, None)
    with pytest.raises(OutputExistsError, match=r"out\.txt: output exists; another run wrote it meanwhile"):
        second.__exit__(None, None, None)
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_overwrite_replaces_as_before(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:  # overwrite=True is the default, as before
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(OutputExistsError), atomic_path(target, overwrite=False) as tmp:
        tmp.write_text("newer")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _race(target: str, barrier: Any, results: Any) -> None:
    """One of two runs writing the same output: both write, then both publish at the same moment."""
    try:
        with atomic_path(Path(target), overwrite=False) as tmp:
            tmp.write_text(f"written by {os.getpid()}")
            barrier.wait(timeout=20)
        results.put(("ok", os.getpid()))
    except OutputExistsError as exc:
        results.put(("exists", str(exc)))


def test_two_processes_writing_one_path_exactly_one_wins(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    target = tmp_path / "out.txt"
    runs = [context.Process(target=_race, args=(str(target), barrier, results)) for _ in range(2)]
    for run in runs:
        run.start()
    outcomes = sorted(results.get(timeout=30) for _ in runs)
    for run in runs:
        run.join(timeout=30)
    assert [kind for kind, _ in outcomes] == ["exists", "ok"]
    assert "another run wrote it meanwhile" in str(outcomes[0][1])
    assert target.read_text() == f"written by {outcomes[1][1]}"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_exclusive_publication_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filesystems without hard links (FAT, SMB): an O_EXCL placeholder keeps publication exclusive."""

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "out.txt"
    with atomic_path(target, overwrite=False) as tmp:
        tmp.write_text("first")
    assert target.read_text() == "first"
    with (
        pytest.raises(OutputExistsError, match="another run wrote it meanwhile"),
        atomic_path(target, overwrite=False) as tmp,
    ):
        tmp.write_text("second")
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(child.stdout)


def test_stale_temporaries_of_killed_runs_are_removed_but_not_live_ones(tmp_path: Path) -> None:
    target = tmp_path / "out.tif"
    dead, host = _dead_pid(), atomic._host()
    stale = [f".out.tif.{host}.{dead}.0badc0de.part", f".out.tif.{host}.{dead}.0badc0de.part.gtiff"]
    kept = [
        f".out.tif.{host}.{os.getppid()}.1234abcd.part",  # a live run on this host (our parent)
        f".out.tif.otherhost.{dead}.1234abcd.part",  # another host: its processes cannot be checked
        ".out.tif.k3j_x9aa.part",  # the old mkstemp names carry no process id: never guessed at
        f".other.tif.{host}.{dead}.1234abcd.part",  # another output's temporary
    ]
    for name in stale + kept:
        (tmp_path / name).write_text("partial")
    with atomic_path(target) as tmp:
        assert tmp.name.startswith(f".out.tif.{host}.{os.getpid()}.") and tmp.name.endswith(".part")
        tmp.write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "out.tif"])


def test_long_names_keep_temporaries_within_the_name_limit(tmp_path: Path) -> None:
    target = tmp_path / ("x" * 240 + ".tif")  # fits in NAME_MAX (255); the old temporary name did not
    dead = _dead_pid()
    with atomic_path(target) as tmp:
        assert len(tmp.name) <= 255
        stale = tmp.with_name(tmp.name.replace(f".{os.getpid()}.", f".{dead}."))
        tmp.write_text("done")
    stale.write_text("left by a killed run")
    with atomic_path(target) as tmp:
        tmp.write_text("again")
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and target.read_text() == "again"


def test_write_errors_are_one_line_output_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    too_long = tmp_path / ("x" * 300 + ".tif")
    with (
        pytest.raises(OutputError, match=r"file name too long for the filesystem \(304 bytes\)"),
        atomic_path(too_long) as tmp,
    ):
        tmp.write_text("never")
    folder = tmp_path / "a_folder.tif"
    folder.mkdir()
    for overwrite in (True, False):
        with (
            pytest.raises(OutputError, match=r"a_folder\.tif: is a folder; give a file name"),
            atomic_path(folder, overwrite=overwrite) as tmp,
        ):
            tmp.write_text("data")
    missing = tmp_path / "nope" / "out.tif"
    with pytest.raises(OutputError, match=r"output folder .*nope does not exist"), atomic_path(missing):
        pass
    real_open = os.open

    def denied(path: Any, flags: int, mode: int = 0o777) -> int:
        if Path(path).name.endswith(".part"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", denied)
    with (
        pytest.raises(OutputError, match=r"out\.tif: permission denied \(cannot write in "),
        atomic_path(tmp_path / "out.tif"),
    ):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder.tif"]
    assert isinstance(OutputError("x"), OSError) and isinstance(OutputError("x"), StfusionError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_read_only_folder_is_a_one_line_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"), atomic_path(folder / "out.txt"):
            pass
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


def test_copy_files_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = tmp_path / "src"
    sources.mkdir()
    for name in ("a", "b"):
        (sources / name).write_text(name)
    out = tmp_path / "out"
    copied = atomic.copy_files([(sources / "a", out / "x" / "a"), (sources / "b", out / "x" / "y" / "b")])
    assert copied == [out / "x" / "a", out / "x" / "y" / "b"] and (out / "x" / "y" / "b").read_text() == "b"
    # an unreadable source: the one-line error names it, and what this call created is gone again
    with pytest.raises(InputError, match=r"src/missing: cannot read \("):
        atomic.copy_files(
            [(sources / "a", tmp_path / "new" / "a"), (sources / "missing", tmp_path / "new" / "m")]
        )
    assert not (tmp_path / "new").exists()
    # an unwritable destination (below a file): the error names it; the folders that existed stay
    (out / "blocker").write_text("")
    with pytest.raises(OutputError, match=r"out/blocker/b: "):
        atomic.copy_files([(sources / "a", out / "z" / "a"), (sources / "b", out / "blocker" / "b")])
    assert sorted(p.name for p in out.iterdir()) == ["blocker", "x"]
    # interrupted (Ctrl-C) on the second copy: the first is removed again, the interruption goes on
    calls = []

    def interrupt(source: object, destination: object) -> None:
        calls.append(destination)
        if len(calls) == 2:
            raise KeyboardInterrupt
        Path(str(destination)).write_text("copied")

    monkeypatch.setattr(shutil, "copy2", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic.copy_files([(sources / "a", tmp_path / "k" / "a"), (sources / "b", tmp_path / "k" / "b")])
    assert not (tmp_path / "k").exists()

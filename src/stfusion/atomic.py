"""Atomic file writes: write to a temporary name in the target folder, then publish it under the target.

A crash or an exception never leaves a partial file under the target name, and a failed write or a
failed publication leaves no temporary file either. Temporary names carry the writer's host and process
id (``.<name>.<host>.<pid>.<token>.part``), so a later write of the same output removes the leftovers
of a killed run without touching those of a run still alive.

Publication without overwrite is exclusive: when two runs write one path, exactly one succeeds and the
other gets :class:`~stfusion.errors.OutputExistsError` (the target is published with ``os.link``, which
fails atomically when the name exists; ``os.replace`` would silently replace the other run's file).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import resource
import secrets
import socket
from collections.abc import Sequence
from pathlib import Path

from stfusion.errors import InputError, OutputExistsError, StfusionError

log = logging.getLogger(__name__)

#: Suffix of temporary files; COG conversion adds ``.gtiff`` for its intermediate file.
TEMPORARY_SUFFIX = ".part"

# Bytes of the target name kept in temporary names: the host, pid, token and suffix add up to ~60 bytes,
# and a temporary name must fit in NAME_MAX (255 on most filesystems) whenever the target name does.
_NAME_BUDGET = 120

# errno values of os.link on filesystems without hard links (FAT/exFAT, some FUSE, SMB/CIFS mounts,
# too many links): publication falls back to an O_EXCL placeholder.
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EINVAL}
)


class OutputError(StfusionError, OSError):
    """An output cannot be written (disk full, size limit, permission, name too long, a folder...).

    The message is one line, ``<path>: <problem>``; it is also an OSError, for callers that catch those.
    """


def _host() -> str:
    """The host name as it appears in temporary names: letters, digits and '-' only, at most 32."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32] or "host"


def _stem(name: str) -> str:
    """The part of a target name used in its temporary names: the name, or a prefix plus a short hash
    when the name is long (so the temporary name fits whenever the target name does)."""
    if len(os.fsencode(name)) <= _NAME_BUDGET:
        return name
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:10]
    prefix = os.fsencode(name)[: _NAME_BUDGET - 11].decode("utf-8", errors="ignore")
    return f"{prefix}~{digest}"


def temporary_pattern(target: Path) -> re.Pattern[str]:
    """Regular expression of the temporary names of ``target``: groups ``host`` and ``pid``."""
    return re.compile(
        rf"^\.{re.escape(_stem(target.name))}\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+"
        rf"{re.escape(TEMPORARY_SUFFIX)}(\.gtiff)?$"
    )


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (conservative: True when unsure)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to another user
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporary files of ``target`` left by killed runs on this host; return them.

    Only names made by :class:`atomic_path` whose host is this one and whose process no longer exists
    are removed: a concurrent run's temporary file (live process, or another host sharing the folder)
    is kept. A process id reused by a new process keeps its stale file until that process ends.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    pattern, host = temporary_pattern(target), _host()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed  # an unreadable folder: the write itself reports the problem
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or match["host"] != host or _process_alive(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue  # another run cleaned it meanwhile
        except OSError as exc:
            log.warning("%s: could not remove a stale temporary file (%s)", entry.path, exc.strerror)
            continue
        log.info("%s: removed a temporary file left by a killed run (process %s)", entry.path, match["pid"])
        removed.append(Path(entry.path))
    return removed


def file_size_limit() -> int | None:
    """This process's file size limit in bytes (``ulimit -f``), or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def output_error(path: Path, exc: OSError) -> OutputError:
    """A one-line :class:`OutputError` for an OSError met while writing ``path``."""
    folder = path.parent if str(path.parent) else Path(".")
    code = exc.errno
    if code == errno.ENOSPC:
        problem = "no space left on the device (disk full); free some space or write elsewhere"
    elif code == errno.EFBIG:
        limit = file_size_limit()
        problem = "file too large for the filesystem" + (
            f" or the file size limit (ulimit -f: {limit} bytes)" if limit is not None else ""
        )
    elif code == errno.EDQUOT:
        problem = "disk quota exceeded; free some space or write elsewhere"
    elif code in (errno.EACCES, errno.EPERM):
        problem = f"permission denied (cannot write in {folder})"
    elif code == errno.EROFS:
        problem = f"read-only filesystem (cannot write in {folder})"
    elif code == errno.ENAMETOOLONG:
        problem = f"file name too long for the filesystem ({len(os.fsencode(path.name))} bytes)"
    elif code == errno.EISDIR or path.is_dir():
        problem = "is a folder; give a file name"
    elif code == errno.ENOENT and not folder.is_dir():
        problem = f"output folder {folder} does not exist"
    else:
        problem = f"cannot write ({exc.strerror or exc})"
    error = OutputError(f"{path}: {problem}")
    error.errno = code
    return error


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


class atomic_path:  # noqa: N801 - used as a context manager like open()
    """Context manager yielding a temporary path beside ``target``, published onto it on success.

    ``with atomic_path(target) as tmp: write(tmp)``. On an exception, and when publication fails, the
    temporary file is removed and ``target`` is left untouched. Entering removes the stale temporary
    files of ``target`` left by killed runs (:func:`remove_stale_temporaries`).

    Args:
        target: the final path.
        overwrite: replace an existing ``target`` (``os.replace``; the default, as before). When False,
            publication is exclusive: if ``target`` exists when the write ends (e.g. another run wrote
            it meanwhile), :class:`~stfusion.errors.OutputExistsError` is raised and nothing is left.
            It uses ``os.link`` (atomic, fails if the name exists); on filesystems without hard links
            it claims the name with an O_EXCL-created empty placeholder and renames the file onto it:
            still exclusive, but for the duration of that rename the target is an empty file (a crash
            exactly then leaves it behind).
    Raises:
        OutputError: the temporary file cannot be created or published (permission, disk full, name
            too long, target is a folder...), with a one-line message naming ``target``.
    """

    def __init__(self, target: str | os.PathLike[str], *, overwrite: bool = True) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        folder = self.target.parent if str(self.target.parent) else Path(".")
        remove_stale_temporaries(self.target)
        prefix = f".{_stem(self.target.name)}.{_host()}.{os.getpid()}."
        for _ in range(100):
            tmp = folder / f"{prefix}{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
            try:
                # private until published (mkstemp's 0600), then the usual permissions (umask)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                raise output_error(self.target, exc) from exc
            os.close(fd)
            self.tmp = tmp
            return tmp
        raise OutputError(f"{self.target}: cannot create a temporary file in {folder}")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.tmp is not None
        tmp, self.tmp = self.tmp, None
        if exc_type is not None:
            tmp.unlink(missing_ok=True)
            return
        try:
            self._publish(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _exists_error(self) -> OutputExistsError:
        return OutputExistsError(
            f"{self.target}: output exists; another run wrote it meanwhile (pass --overwrite to replace it)"
        )

    def _publish(self, tmp: Path) -> None:
        target = self.target
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            if target.is_dir():
                raise OutputError(f"{target}: is a folder; give a file name")
            if self.overwrite:
                os.replace(tmp, target)
                return
            try:
                os.link(tmp, target)
            except FileExistsError:
                if target.is_dir():
                    raise OutputError(f"{target}: is a folder; give a file name") from None
                raise self._exists_error() from None
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                log.debug("%s: no hard links here (%s); publishing through a placeholder", target, exc)
                self._publish_without_links(tmp)
                return
            try:
                tmp.unlink()
            except OSError as exc:  # published already: a leftover link is no reason to fail the write
                log.warning("%s: could not remove the temporary name (%s)", tmp, exc.strerror)
        except (OutputError, OutputExistsError):
            raise
        except OSError as exc:
            raise output_error(target, exc) from exc

    def _publish_without_links(self, tmp: Path) -> None:
        try:
            fd = os.open(self.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise self._exists_error() from None
        os.close(fd)
        try:
            os.replace(tmp, self.target)
        except BaseException:
            self.target.unlink(missing_ok=True)  # our own empty placeholder
            raise


def copy_files(copies: Sequence[tuple[Path, Path]]) -> list[Path]:
    """Copy each (source, destination), creating the destinations' folders; all or nothing.

    When a copy fails, every file and folder this call created is removed again and a one-line error
    says why: :class:`~stfusion.errors.InputError` naming an unreadable source, else
    :class:`OutputError` naming the destination. Returns the destinations.
    """
    import shutil

    created: list[Path] = []  # folders and files, in creation order
    try:
        for source, destination in copies:
            for folder in reversed(destination.parents):
                if not folder.exists():
                    folder.mkdir()
                    created.append(folder)
            created.append(destination)
            shutil.copy2(source, destination)
    except BaseException as exc:  # a failed copy, or Ctrl-C: nothing of this call is left
        for path in reversed(created):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        if exc.filename is not None and Path(exc.filename) == Path(source):
            raise InputError(f"{source}: cannot read ({exc.strerror or exc})") from exc
        raise output_error(destination, exc) from exc
    return [destination for _, destination in copies]

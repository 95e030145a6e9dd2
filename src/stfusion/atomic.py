"""Atomic file writes: write to a temporary name in the target folder, then rename onto the target.

A crash or an exception never leaves a partial file under the target name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class atomic_path:  # noqa: N801 - used as a context manager like open()
    """Context manager yielding a temporary path beside ``target``; renamed onto it on success.

    On an exception the temporary file is removed and ``target`` is left untouched.
    """

    def __init__(self, target: Path) -> None:
        self.target = Path(target)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(
            prefix=f".{self.target.name}.", suffix=".part", dir=self.target.parent or "."
        )
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.tmp is not None
        if exc_type is None:
            # mkstemp makes the file private (0600); outputs get the usual permissions (umask)
            os.chmod(self.tmp, 0o666 & ~_umask())
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current

"""File signatures: what the first bytes of a file say it is, before any library opens it.

Used to name a file's kind in errors (a GeoTIFF given as a checkpoint, a truncated or foreign file given
as a GeoTIFF) and to tell ``stfusion info`` what to describe. :func:`head` reads four bytes at most;
the tests are pure.
"""

from __future__ import annotations

from pathlib import Path

#: The first four bytes of a TIFF (little- or big-endian) and of a BigTIFF.
TIFF_MAGICS: tuple[bytes, ...] = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: The first bytes of a zip archive: what ``torch.save`` writes.
ZIP_MAGIC = b"PK\x03\x04"
#: The first byte of a pickle of protocol 2 or later (PyTorch's legacy checkpoint format).
PICKLE_MAGIC = b"\x80"


def head(path: Path) -> bytes | None:
    """The first four bytes of ``path`` (fewer for a shorter file); None when it cannot be read."""
    try:
        with path.open("rb") as handle:
            return handle.read(4)
    except OSError:
        return None


def is_tiff(first: bytes | None) -> bool:
    """Whether a file's first bytes are a TIFF's or a BigTIFF's.

    >>> is_tiff(b"II*\\x00"), is_tiff(b"PK\\x03\\x04"), is_tiff(None)
    (True, False, False)
    """
    return first in TIFF_MAGICS


def is_torch_file(first: bytes | None) -> bool:
    """Whether a file's first bytes are those of a ``torch.save`` file (zip) or a legacy pickle.

    >>> is_torch_file(b"PK\\x03\\x04"), is_torch_file(b"\\x80\\x02}q"), is_torch_file(b"II*\\x00")
    (True, True, False)
    """
    return first is not None and first.startswith((ZIP_MAGIC, PICKLE_MAGIC))

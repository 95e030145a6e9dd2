"""Exceptions the package raises for bad input; the CLI turns them into one-line messages."""

from __future__ import annotations


class StfusionError(Exception):
    """Base class: an error caused by the user's input or environment, with a one-line message."""


class InputError(StfusionError, ValueError):
    """A file, folder or option is missing, unreadable or inconsistent; the message names it."""


class OutputExistsError(StfusionError, FileExistsError):
    """An output path exists and overwriting was not requested."""


class NoValidPixelError(InputError):
    """Every pixel of an image is nodata, masked, non-finite or a fill value; ``path`` names the image."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class NothingPredictedError(InputError):
    """Every pixel of a case is invalid in some input (e.g. a fully cloudy coarse image): no prediction."""


class NothingToScoreError(InputError):
    """No pixel of a case is valid in the truth and predicted by every method: no score."""

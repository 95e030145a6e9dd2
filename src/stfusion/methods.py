"""Name -> fusion method lookup, so the CLI and the pipeline treat every method alike.

Classical methods are imported on first use: STARFM and FSDAF are heavier modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

from stfusion.errors import InputError

#: method name -> (module, function) of its fusion function (see stfusion.fusion).
_METHODS: dict[str, tuple[str, str]] = {
    "persistence": ("stfusion.baselines.naive", "persistence"),
    "coarse-delta": ("stfusion.baselines.naive", "coarse_delta"),
    "starfm": ("stfusion.baselines.starfm", "starfm"),
    "fsdaf": ("stfusion.baselines.fsdaf", "fsdaf"),
}

METHOD_NAMES: tuple[str, ...] = tuple(_METHODS)


def get_method(name: str) -> Callable[..., np.ndarray]:
    """The fusion function of a method name; InputError listing the known names otherwise."""
    try:
        module_name, function_name = _METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHOD_NAMES)}") from None
    function: Callable[..., np.ndarray] = getattr(importlib.import_module(module_name), function_name)
    return function

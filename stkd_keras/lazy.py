"""Module attributes imported on first use (PEP 562), so that importing a package loads no backend."""

from __future__ import annotations

import importlib
import sys


def lazy_attributes(module_name: str, exports: dict[str, str]):
    """The `__getattr__` and `__dir__` of a module whose `exports` (name -> defining module) load on first use.

    Example:
    >>> __getattr__, __dir__ = lazy_attributes(__name__, {"Distiller": "stkd_keras.distiller"})
    """

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(sys.modules[module_name], name, value)  # later lookups skip this function
            return value
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    def __dir__():
        return sorted(list(vars(sys.modules[module_name])) + list(exports))

    return __getattr__, __dir__

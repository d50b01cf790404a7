"""Lazy package surfaces (PEP 562). A package's `__init__` names what it offers and which of
its modules defines each name; that module is imported on first use. So `import
shadowdiff.judge` costs nothing until a name is used, and the worker, `shadowdiff --help` and
`summary` never load scipy, jinja2 or mitmproxy's dump master that they do not need. Type
checkers read the package's `TYPE_CHECKING` imports instead."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def exports(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """The module `__getattr__` of `package`: `names` maps a public name to its module."""

    def __getattr__(name: str) -> object:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        # Cached in the package, and over a submodule of the same name (replay.replay).
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__

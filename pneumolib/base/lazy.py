"""Lazy re-exports for a package's `__init__` (PEP 562): a name is imported from its module the
first time it is used, so `import pneumolib` (and a stage's folder) loads no torch until a call
that needs it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`. `exports` maps a module to the
    space-separated public names it defines (`{"pneumolib.train.loop": "fit"}`); a name that is
    a submodule of that module (`{"pneumolib.course": "colab"}`) is imported as the module. Use
    as `__getattr__, __dir__, __all__ = lazy_exports(__name__, {...})`."""
    table = {name: module for module, names in exports.items() for name in names.split()}
    if len(table) != sum(len(names.split()) for names in exports.values()):
        raise ValueError(f"{package}: a name is exported from two modules")

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        # vars(), not getattr: a lazy owner's own __getattr__ must not be asked (it may be this one)
        value = vars(importlib.import_module(module)).get(name)
        if value is None:
            value = importlib.import_module(f"{module}.{name}")
        vars(sys.modules[package])[name] = value  # the next access is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | table.keys())

    return __getattr__, __dir__, sorted(table)

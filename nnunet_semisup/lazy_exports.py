"""Package re-exports that import their module on first use (PEP 562 module ``__getattr__``).

``nnunet_semisup.trainers`` re-exports every trainer class, and each ``trainers/<method>/`` package its own; the
``nnunet-semisup`` command imports the methods' ``cli.py`` modules, which imports those packages. Importing a
trainer imports torch and nnU-Net's trainer (seconds), which a command such as ``trainer-dir`` or ``evaluate``
should not pay. ``from package import *`` (nnU-Net's discovery shim) still binds every name.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, ...]]
) -> tuple[list[str], Callable[[str], object]]:
    """``(__all__, __getattr__)`` for the ``__init__.py`` of ``package``.

    Args:
        package: the package's ``__name__``.
        exports: submodule name (relative to ``package``) -> the names it provides.

    Returns:
        The sorted export names and a module ``__getattr__`` that imports ``package.<submodule>`` when one of its
        names is first looked up (and caches it on the package). Other names raise ``AttributeError``.

    Raises:
        ValueError: a name is listed under two submodules.
    """
    where: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name} is exported by both {where[name]} and {module}")
            where[name] = f"{package}.{module}"

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return sorted(where), __getattr__

"""Package re-exports that import their module on first use (PEP 562 module ``__getattr__``).

``nnunet_semisup.trainers`` re-exports every trainer class, and each ``trainers/<method>/`` package its own; the
``nnunet-semisup`` command imports the methods' ``cli.py`` modules, which imports those packages. Importing a
trainer imports torch and nnU-Net's trainer (seconds), which a command such as ``trainer-dir`` or ``evaluate``
should not pay. ``from package import *`` (nnU-Net's discovery shim) still binds every name.

A method package names the modules that define its trainers; :func:`trainer_classes` reads their class names
from the source (no import), by nnU-Net's naming of trainers (``...Trainer`` and its variants ``...Trainer_X``),
so a new variant is exported, found by ``-tr`` and covered by the tests that enumerate the exports without
editing a list.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
from collections.abc import Callable, Mapping

# nnU-Net's naming of trainer classes: FooTrainer, and FooTrainer_Variant for its variants
TRAINER_CLASS_NAME = re.compile(r"[A-Za-z0-9]*Trainer(_\w+)?")


def trainer_classes(package_file: str, *modules: str) -> dict[str, tuple[str, ...]]:
    """The trainer classes that the given modules of a package define at their top level, read from their source.

    Args:
        package_file: the package's ``__file__`` (its ``__init__.py``).
        modules: module names in that package, e.g. ``"trainer"``.

    Returns:
        Module name -> the names of its top-level classes named like nnU-Net trainers (:data:`TRAINER_CLASS_NAME`),
        in source order.
    """
    folder = os.path.dirname(package_file)
    found = {}
    for module in modules:
        with open(os.path.join(folder, f"{module}.py")) as f:
            tree = ast.parse(f.read())
        found[module] = tuple(
            node.name
            for node in tree.body
            if isinstance(node, ast.ClassDef) and TRAINER_CLASS_NAME.fullmatch(node.name)
        )
    return found


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

"""nnU-Net trainers of nnunet-semisup (installed as ``nnunet_semisup.trainers``).

nnU-Net finds them by class name through ``nnUNet_extTrainer`` (set automatically after ``pip install``;
``nnunet-semisup trainer-dir`` prints the folder). Class names are stored in checkpoints and results folder
names: never rename a released one. Each method lives in its own package ``trainers/<method>/`` (trainer
modules, its own losses, networks, samplers, prediction code and ``cli.py`` verbs); ``base.py`` is what they share.

The classes are imported on first use (see :mod:`nnunet_semisup.lazy_exports`), so that the ``nnunet-semisup``
command, which reads the methods' ``cli.py`` modules, does not import torch and nnU-Net's trainer for every verb.
Each method package lists its trainer classes in its own ``__init__.py``; this package exports all of them.
"""

import importlib
import pkgutil

from nnunet_semisup.lazy_exports import lazy_exports


def _exports() -> dict[str, tuple[str, ...]]:
    """Module or method package -> the trainer classes it exports: the two modules of this folder, and every
    ``trainers/<method>/`` package with the names of its ``__all__`` (found, so a new method needs no entry)."""
    exports = {"base": ("SemiSupervisedTrainer",), "labeled_only": ("LabeledOnlyTrainer",)}
    for method in pkgutil.iter_modules(__path__):
        if method.ispkg:
            exports[method.name] = tuple(importlib.import_module(f"{__name__}.{method.name}").__all__)
    return exports


_EXPORTS = _exports()
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)

# method package (``trainers/<method>/``) -> its trainer class names (packages that export no trainer, such as
# self_training whose method is a command, and the shared modules are left out)
METHOD_TRAINERS: dict[str, tuple[str, ...]] = {
    k: v for k, v in _EXPORTS.items() if v and k not in ("base", "labeled_only")
}


def main_trainers() -> list[str]:
    """One trainer per method package, sorted: the package's shortest class name, its main trainer (the others
    are its variants, named ``<main>_<variant>``). Found from the packages, so a new method is included."""
    return sorted(min(names, key=lambda n: (len(n), n)) for names in METHOD_TRAINERS.values())

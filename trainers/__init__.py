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


__all__, __getattr__ = lazy_exports(__name__, _exports())

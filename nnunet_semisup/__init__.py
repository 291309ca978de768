"""nnunet-semisup: semi-supervised trainers for nnU-Net v2.

This package is the shared core (unlabeled data, schedules and the training clock, losses used by several methods,
evaluation, the layer that drives nnU-Net's commands, the command line); each method lives in its own package
``nnunet_semisup.trainers.<method>`` (repository folder ``trainers/<method>/``). Nothing here imports a method,
except ``cli.py``, which adds each method's verbs.

Kept import-light on purpose: ``nnunet_semisup.pth`` imports ``nnunet_semisup._register`` at every
interpreter start, so nothing heavy (torch, nnunetv2) may be imported here.
"""

__version__ = "0.1.0"

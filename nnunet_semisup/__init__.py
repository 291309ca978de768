"""nnunet-semisup: semi-supervised trainers for nnU-Net v2.

Kept import-light on purpose: ``nnunet_semisup.pth`` imports ``nnunet_semisup._register`` at every
interpreter start, so nothing heavy (torch, nnunetv2) may be imported here.
"""

__version__ = "0.1.0"

"""Make nnU-Net's trainer search (``nnUNet_extTrainer``, nnunetv2 >= 2.8) see this package's trainers.

Imported by ``nnunet_semisup.pth`` at interpreter start: it appends the shim folder to the variable and
does nothing else (no torch, no nnunetv2 import). The shim folder holds one module that re-exports
``nnunet_semisup.trainers``, so nnU-Net imports the shim under a throw-away name while the classes keep
their real module path (pickling, checkpoints, DDP workers).
"""

import os

TRAINER_SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nnunet_ext")
ENV_VAR = "nnUNet_extTrainer"


def register(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> None:
    """Append :data:`TRAINER_SHIM_DIR` to ``environ[nnUNet_extTrainer]`` unless it is already listed."""
    parts = [p for p in environ.get(ENV_VAR, "").split(os.pathsep) if p]
    if TRAINER_SHIM_DIR not in parts:
        environ[ENV_VAR] = os.pathsep.join([*parts, TRAINER_SHIM_DIR])


register()

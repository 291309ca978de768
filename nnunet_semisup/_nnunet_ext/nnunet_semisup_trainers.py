# Shim module for nnU-Net's trainer search (nnUNet_extTrainer). nnU-Net imports this file under a
# temporary top-level name; the classes it re-exports keep their real module path.
from nnunet_semisup.trainers import *  # noqa: F403

"""UniMatch (Yang et al., CVPR 2023) for nnU-Net: FixMatch with dual strong views and feature perturbation."""

from nnunet_semisup.trainers.unimatch.trainer import UniMatchTrainer, UniMatchTrainer_NoFP

__all__ = ["UniMatchTrainer", "UniMatchTrainer_NoFP"]

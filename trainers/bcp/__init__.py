"""BCP (Bai et al., CVPR 2023) for nnU-Net: mean teacher with bidirectional copy-paste."""

from nnunet_semisup.trainers.bcp.trainer import BCPTrainer, BCPTrainer_NoPretrain

__all__ = ["BCPTrainer", "BCPTrainer_NoPretrain"]

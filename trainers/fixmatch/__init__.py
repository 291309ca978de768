"""FixMatch (Sohn et al., NeurIPS 2020) for nnU-Net: weak-to-strong pseudo-label consistency."""

from nnunet_semisup.trainers.fixmatch.trainer import (
    FixMatchTrainer,
    FixMatchTrainer_ConfidentDice,
    FixMatchTrainer_NoCutMix,
    FixMatchTrainer_RampUp,
    FixMatchTrainer_SelfTeacher,
    FixMatchTrainer_Threshold0,
)

__all__ = [
    "FixMatchTrainer",
    "FixMatchTrainer_ConfidentDice",
    "FixMatchTrainer_NoCutMix",
    "FixMatchTrainer_RampUp",
    "FixMatchTrainer_SelfTeacher",
    "FixMatchTrainer_Threshold0",
]

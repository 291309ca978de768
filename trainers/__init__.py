"""nnU-Net trainers of nnunet-semisup (installed as ``nnunet_semisup.trainers``).

nnU-Net finds them by class name through ``nnUNet_extTrainer`` (set automatically after ``pip install``;
``nnunet-semisup trainer-dir`` prints the folder). Class names are stored in checkpoints and results folder
names: never rename a released one.
"""

from nnunet_semisup.trainers.base import SemiSupervisedTrainer
from nnunet_semisup.trainers.bcp import BCPTrainer, BCPTrainer_NoPretrain
from nnunet_semisup.trainers.dtml import (
    DTMLTrainer,
    DTMLTrainer_LabeledOnly,
    DTMLTrainer_Ldis,
    DTMLTrainer_LdisLmask,
)
from nnunet_semisup.trainers.dual_subnet import (
    DualSubnetContrastTrainer,
    DualSubnetContrastTrainer_CodeObjective,
    DualSubnetContrastTrainer_Drop80,
    DualSubnetContrastTrainer_GlobalEntropy,
    DualSubnetContrastTrainer_NoProto,
    DualSubnetContrastTrainer_NoReg,
    DualSubnetContrastTrainer_PrintedLambda,
    DualSubnetContrastTrainer_RampU,
    DualSubnetContrastTrainer_RisingT,
    DualSubnetContrastTrainer_TwoSupervised,
)
from nnunet_semisup.trainers.fixmatch import (
    FixMatchTrainer,
    FixMatchTrainer_ConfidentDice,
    FixMatchTrainer_NoCutMix,
    FixMatchTrainer_RampUp,
    FixMatchTrainer_SelfTeacher,
    FixMatchTrainer_Threshold0,
)
from nnunet_semisup.trainers.labeled_only import LabeledOnlyTrainer
from nnunet_semisup.trainers.mean_teacher import MeanTeacherTrainer, MeanTeacherTrainer_PredictTeacher
from nnunet_semisup.trainers.meta import SelfTrainingMetaTrainer, SelfTrainingMetaTrainer_Stage1Only
from nnunet_semisup.trainers.secl import (
    SECLTrainer,
    SECLTrainer_alpha0,
    SECLTrainer_alpha099,
    SECLTrainer_NoContrast,
    SECLTrainer_RACS,
)
from nnunet_semisup.trainers.sparse_2d import SparseMultiPlane2DTrainer
from nnunet_semisup.trainers.unimatch import UniMatchTrainer, UniMatchTrainer_NoFP
from nnunet_semisup.trainers.wta import WTAPretrainTrainer, WTAPretrainTrainer_CentreGaussian
from nnunet_semisup.trainers.wta_finetune import (
    WTAFinetuneTrainer,
    WTAFinetuneTrainer_FinetuneAll,
    WTAFinetuneTrainer_FinetuneLast,
    WTAFinetuneTrainer_FreezeAll,
)
from nnunet_semisup.trainers.wta_multitask import WTAMultiTaskTrainer, WTAMultiTaskTrainer_OneLevel

__all__ = [
    "BCPTrainer",
    "BCPTrainer_NoPretrain",
    "DTMLTrainer",
    "DTMLTrainer_LabeledOnly",
    "DTMLTrainer_Ldis",
    "DTMLTrainer_LdisLmask",
    "DualSubnetContrastTrainer",
    "DualSubnetContrastTrainer_CodeObjective",
    "DualSubnetContrastTrainer_Drop80",
    "DualSubnetContrastTrainer_GlobalEntropy",
    "DualSubnetContrastTrainer_NoProto",
    "DualSubnetContrastTrainer_NoReg",
    "DualSubnetContrastTrainer_PrintedLambda",
    "DualSubnetContrastTrainer_RampU",
    "DualSubnetContrastTrainer_RisingT",
    "DualSubnetContrastTrainer_TwoSupervised",
    "FixMatchTrainer",
    "FixMatchTrainer_ConfidentDice",
    "FixMatchTrainer_NoCutMix",
    "FixMatchTrainer_RampUp",
    "FixMatchTrainer_SelfTeacher",
    "FixMatchTrainer_Threshold0",
    "LabeledOnlyTrainer",
    "MeanTeacherTrainer",
    "MeanTeacherTrainer_PredictTeacher",
    "SECLTrainer",
    "SECLTrainer_NoContrast",
    "SECLTrainer_RACS",
    "SECLTrainer_alpha0",
    "SECLTrainer_alpha099",
    "SelfTrainingMetaTrainer",
    "SelfTrainingMetaTrainer_Stage1Only",
    "SemiSupervisedTrainer",
    "SparseMultiPlane2DTrainer",
    "UniMatchTrainer",
    "UniMatchTrainer_NoFP",
    "WTAFinetuneTrainer",
    "WTAFinetuneTrainer_FinetuneAll",
    "WTAFinetuneTrainer_FinetuneLast",
    "WTAFinetuneTrainer_FreezeAll",
    "WTAMultiTaskTrainer",
    "WTAMultiTaskTrainer_OneLevel",
    "WTAPretrainTrainer",
    "WTAPretrainTrainer_CentreGaussian",
]

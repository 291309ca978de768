"""nnU-Net trainers of nnunet-semisup (installed as ``nnunet_semisup.trainers``).

nnU-Net finds them by class name through ``nnUNet_extTrainer`` (set automatically after ``pip install``;
``nnunet-semisup trainer-dir`` prints the folder). Class names are stored in checkpoints and results folder
names: never rename a released one. Each method lives in its own package ``trainers/<method>/`` (trainer
modules, its own losses, networks, samplers, prediction code and ``cli.py`` verbs); ``base.py`` is what they share.

The classes are imported on first use (see :mod:`nnunet_semisup.lazy_exports`), so that the ``nnunet-semisup``
command, which reads the methods' ``cli.py`` modules, does not import torch and nnU-Net's trainer for every verb.
"""

from nnunet_semisup.lazy_exports import lazy_exports

# every trainer class, by the module (or method package) that defines it
__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "base": ("SemiSupervisedTrainer",),
        "labeled_only": ("LabeledOnlyTrainer",),
        "mean_teacher": (
            "MeanTeacherTrainer",
            "MeanTeacherTrainer_PredictTeacher",
        ),
        "secl": (
            "SECLTrainer",
            "SECLTrainer_NoContrast",
            "SECLTrainer_RACS",
            "SECLTrainer_alpha0",
            "SECLTrainer_alpha099",
        ),
        "dtml": (
            "DTMLTrainer",
            "DTMLTrainer_LabeledOnly",
            "DTMLTrainer_Ldis",
            "DTMLTrainer_LdisLmask",
        ),
        "dual_subnet": (
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
        ),
        "wta": (
            "WTAPretrainTrainer",
            "WTAPretrainTrainer_CentreGaussian",
            "WTAFinetuneTrainer",
            "WTAFinetuneTrainer_FinetuneAll",
            "WTAFinetuneTrainer_FinetuneLast",
            "WTAFinetuneTrainer_FreezeAll",
            "WTAMultiTaskTrainer",
            "WTAMultiTaskTrainer_OneLevel",
        ),
        "sparsification": (
            "SparseMultiPlane2DTrainer",
            "SelfTrainingMetaTrainer",
            "SelfTrainingMetaTrainer_Stage1Only",
        ),
    },
)

"""Dual-subnet contrastive learning (Karimijafarbigloo, Azad et al. 2023) and its ablations.

The trainer classes are imported on first use (see :mod:`nnunet_semisup.lazy_exports`)."""

from nnunet_semisup.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "trainer": (
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
    },
)

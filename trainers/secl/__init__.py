"""SECL (Xiang et al.): self-ensembling contrastive learning on cubes of unlabeled images.

The trainer classes are imported on first use (see :mod:`nnunet_semisup.lazy_exports`)."""

from nnunet_semisup.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "trainer": (
            "SECLTrainer",
            "SECLTrainer_NoContrast",
            "SECLTrainer_RACS",
            "SECLTrainer_alpha0",
            "SECLTrainer_alpha099",
        ),
    },
)

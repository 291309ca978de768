"""Winner-take-all autoencoders (Sital et al.): pretraining, fine-tuning (S-TL) and multi-task training (S-MTL).

The trainer classes are imported on first use (see :mod:`nnunet_semisup.lazy_exports`)."""

from nnunet_semisup.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "pretrain": (
            "WTAPretrainTrainer",
            "WTAPretrainTrainer_CentreGaussian",
        ),
        "finetune": (
            "WTAFinetuneTrainer",
            "WTAFinetuneTrainer_FinetuneAll",
            "WTAFinetuneTrainer_FinetuneLast",
            "WTAFinetuneTrainer_FreezeAll",
        ),
        "multitask": (
            "WTAMultiTaskTrainer",
            "WTAMultiTaskTrainer_OneLevel",
        ),
    },
)

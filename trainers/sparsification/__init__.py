"""Annotation sparsification (Zheng et al., AAAI 2020): slice selection, sparse datasets, the 2D base model,
multi-view pseudo-labels and the self-training meta-model.

The trainer classes are imported on first use (see :mod:`nnunet_semisup.lazy_exports`)."""

from nnunet_semisup.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "sparse_2d": ("SparseMultiPlane2DTrainer",),
        "meta": (
            "SelfTrainingMetaTrainer",
            "SelfTrainingMetaTrainer_Stage1Only",
        ),
    },
)

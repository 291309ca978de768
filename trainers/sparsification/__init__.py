"""Annotation sparsification (Zheng et al., AAAI 2020): slice selection, sparse datasets, the 2D base model,
multi-view pseudo-labels and the self-training meta-model."""

from nnunet_semisup.lazy_exports import lazy_exports, trainer_classes

# the trainer classes of these modules, imported on first use
__all__, __getattr__ = lazy_exports(__name__, trainer_classes(__file__, "sparse_2d", "meta"))

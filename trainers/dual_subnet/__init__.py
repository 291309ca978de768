"""Dual-subnet contrastive learning (Karimijafarbigloo, Azad et al. 2023) and its ablations."""

from nnunet_semisup.lazy_exports import lazy_exports, trainer_classes

# the trainer classes of these modules, imported on first use
__all__, __getattr__ = lazy_exports(__name__, trainer_classes(__file__, "trainer"))

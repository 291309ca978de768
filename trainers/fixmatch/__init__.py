"""FixMatch (Sohn et al., NeurIPS 2020) for nnU-Net: weak-to-strong pseudo-label consistency."""

from nnunet_semisup.lazy_exports import lazy_exports, trainer_classes

# the trainer classes of these modules, imported on first use
__all__, __getattr__ = lazy_exports(__name__, trainer_classes(__file__, "trainer"))

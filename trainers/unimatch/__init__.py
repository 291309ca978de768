"""UniMatch (Yang et al., CVPR 2023) for nnU-Net: FixMatch with dual strong views and feature perturbation."""

from nnunet_semisup.lazy_exports import lazy_exports, trainer_classes

# the trainer classes of these modules, imported on first use
__all__, __getattr__ = lazy_exports(__name__, trainer_classes(__file__, "trainer"))

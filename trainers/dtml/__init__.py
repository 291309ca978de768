"""DTML (Zhang & Zhang, PRCV 2021): a segmentation and a signed-distance network that teach each other."""

from nnunet_semisup.lazy_exports import lazy_exports, trainer_classes

# the trainer classes of these modules, imported on first use
__all__, __getattr__ = lazy_exports(__name__, trainer_classes(__file__, "trainer"))

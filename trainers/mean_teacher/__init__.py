"""Mean teacher (Tarvainen & Valpola, NeurIPS 2017): an EMA teacher's predictions as consistency targets."""

from nnunet_semisup.lazy_exports import lazy_exports, trainer_classes

# the trainer classes of these modules, imported on first use
__all__, __getattr__ = lazy_exports(__name__, trainer_classes(__file__, "trainer"))

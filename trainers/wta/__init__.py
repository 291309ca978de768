"""Winner-take-all autoencoders (Sital et al.): pretraining, fine-tuning (S-TL) and multi-task training (S-MTL)."""

from nnunet_semisup.lazy_exports import lazy_exports, trainer_classes

# the trainer classes of these modules, imported on first use
__all__, __getattr__ = lazy_exports(__name__, trainer_classes(__file__, "pretrain", "finetune", "multitask"))

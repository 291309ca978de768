"""Pseudo-label self-training (``nnunet-semisup self-train``): a pipeline of stock nnU-Net trainings, no trainer
class of its own (teacher and students are LabeledOnlyTrainer or any trainer named on the command line)."""

__all__: list[str] = []

"""Evaluation of segmentations: Dice, IoU, HD95 and ASD per class (backend of ``nnunet-semisup evaluate``)."""

from nnunet_semisup.evaluation.evaluate import evaluate_folders, format_table, save_summary
from nnunet_semisup.evaluation.metrics import binary_metrics, surface_distances

__all__ = ["binary_metrics", "evaluate_folders", "format_table", "save_summary", "surface_distances"]

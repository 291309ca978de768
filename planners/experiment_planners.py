"""Experiment planners that plan from labeled + unlabeled images.

nnU-Net's planners (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
image segmentation", Nature Methods 2021, rule-based parameters; ResEnc presets: Isensee et al., "nnU-Net
Revisited", MICCAI 2024) derive the target spacing, median shape, patch size, network topology and batch size
from the labeled cases. These subclasses change two inputs and nothing else:

1. the fingerprint: spacings and shapes of labeled + unlabeled images
   (:class:`~nnunet_semisup.planners.fingerprint.SemiSupervisedFingerprintExtractor`); intensity statistics
   stay those of the labeled foreground;
2. the batch-size cap: nnU-Net caps the batch so that one batch covers at most a fraction ``f`` of the
   dataset's voxels, ``batch <= round(f * median_voxels * numTraining / patch_voxels)`` (never below 2;
   ``f = max_dataset_covered``: 5 % for ``ExperimentPlanner``, 100 % for the ResEnc presets). Here the dataset is
   ``numTraining + unlabeled`` cases, because every step of a semi-supervised trainer trains on a labeled and
   an unlabeled batch of this size (``SemiSupervisedTrainer.unlabeled_batch_size`` defaults to it), drawn from
   the whole pool. The GPU-memory bound on the batch is unchanged.

Everything else (preprocessor ``DefaultPreprocessor``, normalisation, resampling, network class, transpose,
reader) is the parent planner's, so the plans name only stock classes and ``nnUNetv2_preprocess``,
``nnUNetv2_train -p``, ``nnUNetv2_predict -p`` and ``nnUNetv2_ensemble`` use them unchanged. The plans record
the parent planner in ``experiment_planner_used`` (nnU-Net can only resolve its own classes by name) and this
planner, the fingerprint file and the case counts in ``semisup_planning``.

Without unlabeled images the plans equal the parent planner's (apart from their name and data identifier).
"""

from __future__ import annotations

from collections.abc import Sequence

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL,
    nnUNetPlannerResEncM,
    nnUNetPlannerResEncXL,
)
from nnunetv2.paths import nnUNet_preprocessed

from .fingerprint import SEMISUP_FINGERPRINT_FILE


class nnUNetSemiSupPlanner(ExperimentPlanner):
    """nnU-Net's default planner (``ExperimentPlanner``) planning from labeled + unlabeled images.

    Reads ``dataset_fingerprint_semisup.json`` (written by ``nnunet-semisup plan-and-preprocess``); the stock
    ``dataset_fingerprint.json`` must exist as well, because the parent's constructor loads it. Keyword
    arguments are the parent's; ``plans_name`` defaults to :attr:`default_plans_name`.

    Raises:
        RuntimeError: the semi-supervised fingerprint is missing.
    """

    default_plans_name = "nnUNetSemiSupPlans"

    def __init__(self, dataset_name_or_id: str | int, *, plans_name: str | None = None, **kwargs):
        super().__init__(dataset_name_or_id, plans_name=plans_name or self.default_plans_name, **kwargs)
        fingerprint_file = join(nnUNet_preprocessed, self.dataset_name, SEMISUP_FINGERPRINT_FILE)
        if not isfile(fingerprint_file):
            raise RuntimeError(
                f"{fingerprint_file} not found: run `nnunet-semisup plan-and-preprocess -d "
                f"{self.dataset_name}` (it extracts this fingerprint and plans)."
            )
        self.dataset_fingerprint = load_json(fingerprint_file)
        self.num_unlabeled_cases = len(self.dataset_fingerprint["unlabeled_case_ids"])

    def get_plans_for_configuration(
        self,
        spacing: Sequence[float],
        median_shape: Sequence[float],
        data_identifier: str,
        approximate_n_voxels_dataset: float,
        _cache: dict,
    ) -> dict:
        """The parent's configuration (spacing in mm, median shape in voxels, nnU-Net's axis order), with the
        dataset's voxel count, the base of the batch cap, taken over ``numTraining`` labeled plus the unlabeled
        cases. The parent passes ``median voxels * numTraining``."""
        num_labeled = self.dataset_json["numTraining"]
        approximate_n_voxels_dataset *= (num_labeled + self.num_unlabeled_cases) / num_labeled
        return super().get_plans_for_configuration(
            spacing, median_shape, data_identifier, approximate_n_voxels_dataset, _cache
        )

    def generate_data_identifier(self, configuration_name: str) -> str:
        # nnU-Net's ResEnc planners reuse the nnUNetPlans data folders for 2d and 3d_fullres; these plans'
        # spacing can differ from nnUNetPlans', so every configuration gets a folder of its own
        return f"{self.plans_identifier}_{configuration_name}"

    @classmethod
    def nnunet_planner(cls) -> type[ExperimentPlanner]:
        """The nnU-Net planner this class extends (the first of nnU-Net's classes in its MRO)."""
        return next(c for c in cls.__mro__ if c.__module__.startswith("nnunetv2."))

    def save_plans(self, plans: dict) -> None:
        plans["experiment_planner_used"] = self.nnunet_planner().__name__
        plans["semisup_planning"] = {
            "planner": type(self).__name__,
            "fingerprint": SEMISUP_FINGERPRINT_FILE,
            "num_labeled_cases": self.dataset_json["numTraining"],
            "num_unlabeled_cases": self.num_unlabeled_cases,
        }
        super().save_plans(plans)


class nnUNetSemiSupPlannerResEncM(nnUNetSemiSupPlanner, nnUNetPlannerResEncM):
    """nnU-Net's ResEnc M preset (``nnUNetPlannerResEncM``, 8 GB) planning from labeled + unlabeled images."""

    default_plans_name = "nnUNetSemiSupResEncUNetMPlans"


class nnUNetSemiSupPlannerResEncL(nnUNetSemiSupPlanner, nnUNetPlannerResEncL):
    """nnU-Net's ResEnc L preset (``nnUNetPlannerResEncL``, 24 GB) planning from labeled + unlabeled images."""

    default_plans_name = "nnUNetSemiSupResEncUNetLPlans"


class nnUNetSemiSupPlannerResEncXL(nnUNetSemiSupPlanner, nnUNetPlannerResEncXL):
    """nnU-Net's ResEnc XL preset (``nnUNetPlannerResEncXL``, 40 GB) planning from labeled + unlabeled images."""

    default_plans_name = "nnUNetSemiSupResEncUNetXLPlans"


# -pl values of nnUNetv2_plan_and_preprocess (and short forms) -> the planner that extends them
PLANNERS: dict[str, type[nnUNetSemiSupPlanner]] = {
    "ExperimentPlanner": nnUNetSemiSupPlanner,
    "nnUNetPlannerResEncM": nnUNetSemiSupPlannerResEncM,
    "nnUNetPlannerResEncL": nnUNetSemiSupPlannerResEncL,
    "nnUNetPlannerResEncXL": nnUNetSemiSupPlannerResEncXL,
    "ResEncM": nnUNetSemiSupPlannerResEncM,
    "ResEncL": nnUNetSemiSupPlannerResEncL,
    "ResEncXL": nnUNetSemiSupPlannerResEncXL,
}

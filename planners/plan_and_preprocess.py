"""``nnUNetv2_plan_and_preprocess`` with a planner that sees the unlabeled images.

Steps per dataset: fingerprint (nnU-Net's, plus the unlabeled geometry), plans with a
:mod:`~nnunet_semisup.planners.experiment_planners` planner, nnU-Net's own preprocessing of the labeled cases
with these plans, and preprocessing of ``imagesUnlabeled/`` with the same plans
(:func:`nnunet_semisup.data.unlabeled.preprocess_unlabeled`). Each step is nnU-Net's API function for that step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nnunet_semisup.data.unlabeled import UNLABELED_FOLDER, preprocess_unlabeled

from .experiment_planners import nnUNetSemiSupPlanner

# nnUNetv2_plan_and_preprocess's default -np per configuration
DEFAULT_NUM_PROCESSES = {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}


class PlanningInputError(ValueError):
    """Bad input for planning (dataset, folders, options). The message says what is wrong and how to fix it."""


@dataclass
class PlanningReport:
    """What :func:`plan_and_preprocess_dataset` did for one dataset."""

    dataset_name: str
    plans_identifier: str
    num_labeled: int
    num_unlabeled: int
    preprocessed_configurations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_and_preprocess_dataset(
    dataset_id: int,
    planner_class: type[nnUNetSemiSupPlanner] = nnUNetSemiSupPlanner,
    configurations: Sequence[str] = ("2d", "3d_fullres", "3d_lowres"),
    num_processes: Sequence[int] | None = None,
    num_processes_fingerprint: int = 8,
    verify_dataset_integrity: bool = False,
    clean: bool = False,
    preprocess: bool = True,
    gpu_memory_target_in_gb: float | None = None,
    overwrite_target_spacing: Sequence[float] | None = None,
    overwrite_plans_name: str | None = None,
    verbose: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PlanningReport:
    """Fingerprint, plan and (unless ``preprocess`` is False) preprocess labeled and unlabeled cases.

    Args mirror ``nnUNetv2_plan_and_preprocess`` (``-np`` is ``num_processes``: one number, or one per
    configuration; default 8 for 2d, 4 for 3d_fullres, 8 for 3d_lowres). ``overwrite_target_spacing`` is in mm,
    nnU-Net's axis order, 3d_fullres only (as in nnU-Net).

    Raises:
        PlanningInputError: unknown dataset, no labeled case, or inconsistent options.
        UnlabeledDataError: a badly named or corrupt unlabeled image (raised before anything is written).
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from .fingerprint import SemiSupervisedFingerprintExtractor

    if overwrite_target_spacing is not None and len(overwrite_target_spacing) != 3:
        raise PlanningInputError(
            f"-overwrite_target_spacing takes 3 numbers (mm, one per axis), got {list(overwrite_target_spacing)}"
        )
    num_processes = _processes_per_configuration(configurations, num_processes)
    try:
        dataset_name = convert_id_to_dataset_name(dataset_id)
    except RuntimeError as e:
        raise PlanningInputError(f"dataset {dataset_id} not found ({e})") from None
    raw_dir = os.path.join(nnUNet_raw.require(), dataset_name)
    if not os.path.isfile(os.path.join(raw_dir, "dataset.json")):
        raise PlanningInputError(f"{raw_dir}/dataset.json not found: every nnU-Net raw dataset needs one.")
    if not get_filenames_of_train_images_and_targets(
        raw_dir, load_json(os.path.join(raw_dir, "dataset.json"))
    ):
        raise PlanningInputError(
            f"{raw_dir} has no labeled case (imagesTr + labelsTr): nnU-Net plans from labeled cases; add some."
        )

    log(f"Fingerprint extraction ({dataset_name}: labeled + {UNLABELED_FOLDER})...")
    fingerprint = extract_fingerprint_dataset(
        dataset_id,
        SemiSupervisedFingerprintExtractor,
        num_processes_fingerprint,
        verify_dataset_integrity,
        clean,
        verbose,
        progress,
    )
    report = PlanningReport(
        dataset_name,
        plans_identifier="",
        num_labeled=len(fingerprint["labeled_case_ids"]),
        num_unlabeled=len(fingerprint["unlabeled_case_ids"]),
    )
    if report.num_unlabeled == 0:
        report.notes.append(
            f"{raw_dir} has no {UNLABELED_FOLDER}/ images: the plans come from the labeled cases alone and equal "
            f"nnU-Net's {planner_class.nnunet_planner().__name__} plans (only their name and data folders "
            f"differ). Put unlabeled images into {os.path.join(raw_dir, UNLABELED_FOLDER)} (named like imagesTr) "
            f"and run this command again to plan with them."
        )

    log("Experiment planning...")
    plans, report.plans_identifier = plan_experiment_dataset(
        dataset_id,
        planner_class,
        gpu_memory_target_in_gb,
        "DefaultPreprocessor",
        overwrite_target_spacing,
        overwrite_plans_name,
    )
    if preprocess:
        log("Preprocessing...")
        preprocess_dataset(
            dataset_id, report.plans_identifier, list(configurations), num_processes, verbose, progress
        )
        preprocessed_dir = os.path.join(nnUNet_preprocessed.require(), dataset_name)
        for configuration, n in zip(configurations, num_processes):
            # 3d_cascade_fullres reuses the 3d_fullres data; cascades are not trained semi-supervised
            if configuration not in plans["configurations"] or "previous_stage" in plans[
                "configurations"
            ].get(configuration, {}):
                continue
            report.preprocessed_configurations.append(configuration)
            if report.num_unlabeled:
                preprocess_unlabeled(
                    raw_dir,
                    preprocessed_dir,
                    configuration,
                    report.plans_identifier,
                    num_processes=n,
                    progress=progress,
                    log=log,
                )
    return report


def _processes_per_configuration(
    configurations: Sequence[str], num_processes: Sequence[int] | None
) -> list[int]:
    if not num_processes:
        return [DEFAULT_NUM_PROCESSES.get(c, 4) for c in configurations]
    if len(num_processes) == 1:
        return list(num_processes) * len(configurations)
    if len(num_processes) != len(configurations):
        raise PlanningInputError(
            f"-np takes one number or one per configuration; got {len(num_processes)} numbers for "
            f"{len(configurations)} configurations {list(configurations)}."
        )
    return list(num_processes)

"""The one layer that drives nnU-Net's commands and folders.

Every step that our pipelines (``demo``, ``benchmark``, ``self-train``, the sparsification verbs) run through
nnU-Net goes through here: the environment of a self-contained work folder, dataset names, results folders,
planning, moving plans between datasets, preprocessing, training and prediction. The console scripts are the
stock ones (``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_move_plans_between_datasets``, ``nnUNetv2_preprocess``,
``nnUNetv2_train``, ``nnUNetv2_predict``), run by a :class:`~nnunet_semisup.console.Console` that keeps their
whole output in a log; prediction that must swap nnU-Net's network runs nnU-Net's predictor in this process
(:func:`load_predictor`). Every model is therefore a normal nnU-Net results folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from nnunet_semisup.console import Console

FOLDER_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
FINAL_CHECKPOINT = "checkpoint_final.pth"
# the record of (plans, configuration) pairs that move_plans_and_preprocess finished in a dataset's preprocessed
# folder (its name predates the benchmark's use of it; kept so existing work folders resume)
PREPROCESSED_MARKER = "semisup_self_training_preprocessed.json"


# ------------------------------------------------------------------ folders and names
def use_work_folder(work_dir: Path, environ: dict[str, str], **settings: str) -> dict[str, str]:
    """Point nnU-Net's three folders at ``work_dir/nnUNet_raw``, ``.../nnUNet_preprocessed`` and
    ``.../nnUNet_results`` (created): in a copy of ``environ`` (for the console scripts, with ``settings`` such
    as ``nnUNet_semisup_schedule`` added) and in this process's ``os.environ`` (for the steps run in-process).

    Returns the scripts' environment.
    """
    env = dict(environ)
    env.update(settings)
    for key in FOLDER_VARIABLES:
        env[key] = str(work_dir / key)
        Path(env[key]).mkdir(parents=True, exist_ok=True)
        os.environ[key] = env[key]
    return env


def resolve_dataset(
    dataset: str, error: type[Exception] = SystemExit, prefix: str = "nnunet-semisup: "
) -> str:
    """``DatasetXXX_Name`` of a dataset name or id, as nnU-Net's commands accept it.

    Raises:
        ``error`` with ``prefix`` and a message naming the dataset when nnU-Net finds no such dataset.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise error(f"{prefix}dataset {dataset!r} not found ({e})") from None


def raw_dataset_folder(dataset: str) -> str:
    """The raw folder of a dataset given as a folder, a name or an id (``$nnUNet_raw/DatasetXXX_Name``)."""
    if os.path.isdir(dataset):
        return os.path.abspath(dataset)
    from nnunetv2.paths import nnUNet_raw

    return os.path.join(nnUNet_raw.require(), resolve_dataset(dataset))


def model_folder(
    dataset: str, trainer: str, plans: str, configuration: str, results_root: str | None = None
) -> Path:
    """``<results>/<dataset>/<trainer>__<plans>__<configuration>``, nnU-Net's model folder (``results_root``
    default: ``$nnUNet_results``)."""
    if results_root is None:
        from nnunetv2.paths import nnUNet_results

        results_root = nnUNet_results.require()
    return Path(results_root) / dataset / f"{trainer}__{plans}__{configuration}"


def fold_folder(
    results_root: str, dataset: str, trainer: str, plans: str, configuration: str, fold: str
) -> Path:
    """The ``fold_<fold>`` folder of a model (where ``nnUNetv2_train`` writes its checkpoints)."""
    return model_folder(dataset, trainer, plans, configuration, results_root) / f"fold_{fold}"


def parse_folds(folds: Sequence[str] | None) -> list[int | str] | None:
    """nnU-Net's fold arguments (``0`` .. ``4`` or ``all``) as its predictor takes them; None stays None."""
    return None if folds is None else [f if f == "all" else int(f) for f in folds]


def pretrained_weights_argument(argv: list[str] | None = None) -> str | None:
    """The path given to ``nnUNetv2_train -pretrained_weights`` (nnU-Net does not pass it to the trainer)."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == "-pretrained_weights" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("-pretrained_weights="):
            return arg.split("=", 1)[1]
    return None


# ------------------------------------------------------------------ console scripts
def plan_and_preprocess(
    console: Console,
    log: Path,
    dataset_id: int | str,
    configuration: str,
    num_processes: int,
    spacing_mm: float | None = None,
    plans: str | None = None,
    semisup: bool = False,
) -> None:
    """``nnUNetv2_plan_and_preprocess``; with ``spacing_mm`` the plans get that isotropic target spacing and the
    name ``plans``. With ``semisup``, ``nnunet-semisup plan-and-preprocess`` instead (the same flags; spacing,
    shape and batch size planned from the labeled + unlabeled images, see docs/planners.md), which also
    preprocesses the unlabeled images."""
    custom = []
    if spacing_mm is not None:
        custom = ["-overwrite_target_spacing", *[f"{spacing_mm:g}"] * 3, "-overwrite_plans_name", str(plans)]
    if semisup:
        console.run(log, "nnunet-semisup", "plan-and-preprocess", "-d", str(dataset_id), "-c", configuration,
                    "-np", str(num_processes), "-npfp", str(num_processes), "--no_pbar", *custom)  # fmt: skip
        return
    console.run(log, "nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration,
                "-np", str(num_processes), *custom)  # fmt: skip


def move_plans(console: Console, log: Path, source: str, target: str, plans: str) -> None:
    """``nnUNetv2_move_plans_between_datasets``: ``source``'s plans for ``target`` (the stock command rewrites the
    dataset name and the reader/writer and keeps spacing, patch size and normalization statistics)."""
    console.run(
        log, "nnUNetv2_move_plans_between_datasets", "-s", source, "-t", target, "-sp", plans, "-tp", plans
    )


def install_dataset_files(
    raw_dataset_json: Path, source_preprocessed: Path, target_preprocessed: Path
) -> None:
    """What planning writes into ``nnUNet_preprocessed`` and moving plans does not: the dataset.json (which
    ``nnUNetv2_preprocess`` and the trainers read there) and the fingerprint, the one of the dataset whose plans
    these are (the trainer copies it into its results folder; a new fingerprint of a dataset with ignore labels
    would count ignore voxels as foreground in its intensity statistics)."""
    target_preprocessed.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(raw_dataset_json, target_preprocessed / "dataset.json")
    shutil.copyfile(
        source_preprocessed / "dataset_fingerprint.json", target_preprocessed / "dataset_fingerprint.json"
    )


def preprocess(
    console: Console, log: Path, dataset_id: int | str, plans: str, configuration: str, num_processes: int
) -> None:
    """``nnUNetv2_preprocess`` of one configuration with the named plans."""
    console.run(log, "nnUNetv2_preprocess", "-d", str(dataset_id), "-plans_name", plans, "-c", configuration,
                "-np", str(num_processes))  # fmt: skip


def move_plans_and_preprocess(
    console: Console,
    log_dir: Path,
    source: str,
    target_id: int,
    target: str,
    plans: str,
    configuration: str,
    num_processes: int,
    raw_root: str,
    preprocessed_root: str,
    splits: list[dict] | None = None,
) -> None:
    """Give dataset ``target`` the plans of dataset ``source`` and preprocess it with them: the plans moved
    (:func:`move_plans`, unless ``target`` has them), its dataset.json and ``source``'s fingerprint installed,
    ``splits`` (if given) written as its ``splits_final.json``, then :func:`preprocess`. Skipped when done before
    for these plans and configuration (recorded in :data:`PREPROCESSED_MARKER`)."""
    folder = Path(preprocessed_root) / target
    marker = folder / PREPROCESSED_MARKER
    done = json.loads(marker.read_text()) if marker.is_file() else []
    if [plans, configuration] in done:
        console.say(f"{target}: {plans} {configuration} already preprocessed")
        return
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / f"{plans}.json").is_file():
        move_plans(console, log_dir / "move_plans.log", source, target, plans)
    install_dataset_files(Path(raw_root) / target / "dataset.json", Path(preprocessed_root) / source, folder)
    if splits is not None:
        (folder / "splits_final.json").write_text(json.dumps(splits, indent=2) + "\n")
    preprocess(console, log_dir / "preprocess.log", target_id, plans, configuration, num_processes)
    marker.write_text(json.dumps([*done, [plans, configuration]]) + "\n")


def train(
    console: Console,
    log: Path,
    dataset: str,
    configuration: str,
    fold: str,
    trainer: str,
    plans: str,
    device: str,
    results_root: str,
    what: str,
) -> Path:
    """``nnUNetv2_train`` unless ``checkpoint_final.pth`` exists; continues (``--c``) an interrupted run.

    Returns the final checkpoint. Raises the console's error when the script fails or writes no final checkpoint.
    """
    folder = fold_folder(results_root, dataset, trainer, plans, configuration, fold)
    final = folder / FINAL_CHECKPOINT
    if final.is_file():
        console.say(f"{what}: already trained ({final})")
        return final
    resume = ["--c"] if folder.is_dir() else []
    console.say(f"{what}: training {trainer} on {dataset}" + (" (continuing)" if resume else ""))
    console.run(log, "nnUNetv2_train", dataset, configuration, fold, "-tr", trainer, "-p", plans,
                "-device", device, *resume)  # fmt: skip
    if not final.is_file():
        raise console.error(f"nnUNetv2_train finished without writing {final}; see {log}")
    return final


def predict(
    console: Console,
    log: Path,
    input_folder: Path,
    output_folder: Path,
    dataset: str,
    configuration: str,
    trainer: str,
    plans: str,
    fold: str,
    device: str,
    num_processes: int = 1,
    disable_tta: bool = False,
    save_probabilities: bool = False,
    continue_prediction: bool = False,
) -> None:
    """``nnUNetv2_predict`` of every image in ``input_folder`` with one trained fold (its final checkpoint)."""
    extra = [flag for flag, on in (("--disable_tta", disable_tta), ("--save_probabilities", save_probabilities),
                                   ("--continue_prediction", continue_prediction)) if on]  # fmt: skip
    console.run(log, "nnUNetv2_predict", "-i", str(input_folder), "-o", str(output_folder), "-d", dataset,
                "-c", configuration, "-tr", trainer, "-p", plans, "-f", fold, "-device", device,
                "-npp", str(num_processes), "-nps", str(num_processes), *extra)  # fmt: skip


# ------------------------------------------------------------------ in-process prediction
def load_predictor(
    folder: str | Path,
    folds: Sequence[str] | None,
    device: str,
    disable_tta: bool,
    checkpoint: str = FINAL_CHECKPOINT,
    predictor_class: type | None = None,
    tile_step_size: float = 0.5,
    **predictor_kwargs: object,
):
    """nnU-Net's predictor (or ``predictor_class``, a subclass) loaded from a trained model folder, for
    prediction that changes the network before it runs (a second network, a slice orientation).

    Raises:
        FileNotFoundError: ``folder`` does not exist (the message names it).
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no trained model in {folder}: train it first")
    predictor = (predictor_class or nnUNetPredictor)(
        tile_step_size=tile_step_size,
        use_mirroring=not disable_tta,
        perform_everything_on_device=device != "cpu",
        device=torch.device(device),
        allow_tqdm=False,
        **predictor_kwargs,
    )
    predictor.initialize_from_trained_model_folder(str(folder), parse_folds(folds), checkpoint)
    return predictor

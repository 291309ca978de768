"""Tests for how nnU-Net finds the trainers: ``_register`` (nnUNet_extTrainer), the shim folder, and
``nnunet-semisup trainer-dir``."""

import os

import pytest

from nnunet_semisup import _register
from nnunet_semisup._register import ENV_VAR, TRAINER_SHIM_DIR, register
from nnunet_semisup.cli import main

# --- _register.register ----------------------------------------------------------------------------------


def test_register_sets_variable_when_absent():
    environ: dict[str, str] = {}
    register(environ)
    assert environ == {ENV_VAR: TRAINER_SHIM_DIR}


def test_register_appends_after_existing_entries():
    environ = {ENV_VAR: os.pathsep.join(["/opt/a", "/opt/b"]), "OTHER": "x"}
    register(environ)
    assert environ[ENV_VAR].split(os.pathsep) == ["/opt/a", "/opt/b", TRAINER_SHIM_DIR]
    assert environ["OTHER"] == "x"


def test_register_is_idempotent():
    environ = {ENV_VAR: "/opt/a"}
    register(environ)
    once = environ[ENV_VAR]
    register(environ)
    register(environ)
    assert environ[ENV_VAR] == once
    assert once.split(os.pathsep).count(TRAINER_SHIM_DIR) == 1


def test_register_keeps_shim_dir_where_it_already_is():
    value = os.pathsep.join([TRAINER_SHIM_DIR, "/opt/a"])
    environ = {ENV_VAR: value}
    register(environ)
    assert environ[ENV_VAR] == value


def test_register_drops_empty_entries_when_appending():
    environ = {ENV_VAR: os.pathsep + "/opt/a" + os.pathsep}
    register(environ)
    assert environ[ENV_VAR].split(os.pathsep) == ["/opt/a", TRAINER_SHIM_DIR]


def test_installed_pth_registered_shim_dir_at_interpreter_start():
    # the .pth file of a non-editable install imports _register, which appends the shim dir to os.environ
    assert TRAINER_SHIM_DIR in os.environ.get(ENV_VAR, "").split(os.pathsep)


def test_shim_dir_holds_the_trainer_shim_module():
    assert os.path.isabs(TRAINER_SHIM_DIR)
    assert os.path.dirname(TRAINER_SHIM_DIR) == os.path.dirname(os.path.abspath(_register.__file__))
    shim = os.path.join(TRAINER_SHIM_DIR, "nnunet_semisup_trainers.py")
    assert os.path.isfile(shim)
    with open(shim) as f:
        assert "from nnunet_semisup.trainers import *" in f.read()


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_trainer_dir_prints_shim_folder(capsys):
    assert main(["trainer-dir"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == TRAINER_SHIM_DIR


def test_cli_without_command_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main([])
    assert excinfo.value.code == 2
    assert "usage" in capsys.readouterr().err


# --- nnU-Net's own trainer search ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def find_trainer():
    """nnU-Net's trainer search with ``nnUNet_extTrainer`` set to only the shim folder."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_VAR, TRAINER_SHIM_DIR)
        yield recursive_find_trainer_class_by_name


@pytest.mark.parametrize(
    "name, module",
    [
        ("MeanTeacherTrainer", "nnunet_semisup.trainers.mean_teacher.trainer"),
        ("MeanTeacherTrainer_PredictTeacher", "nnunet_semisup.trainers.mean_teacher.trainer"),
        ("LabeledOnlyTrainer", "nnunet_semisup.trainers.labeled_only"),
        ("DualSubnetContrastTrainer", "nnunet_semisup.trainers.dual_subnet.trainer"),
        ("DualSubnetContrastTrainer_NoProto", "nnunet_semisup.trainers.dual_subnet.trainer"),
    ],
)
def test_nnunet_trainer_search_finds_our_classes_with_real_module_path(find_trainer, name, module):
    import importlib

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    cls = find_trainer(name)
    assert cls.__name__ == name
    assert cls.__module__ == module
    assert issubclass(cls, nnUNetTrainer)
    # the very class object of the installed package, not a copy imported under the shim's name
    assert getattr(importlib.import_module(module), name) is cls


def test_nnunet_trainer_search_still_fails_for_unknown_names(find_trainer):
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
        find_trainer("NoSuchSemisupTrainer")


# --- one command, the methods' verbs, flag spellings --------------------------------------------------------


def test_the_command_and_the_trainer_exports_import_no_torch():
    """Building the parser reads every method's cli.py, which imports the trainer packages: their classes must
    load on first use only, or every verb (trainer-dir, evaluate) would pay for importing torch and nnU-Net."""
    import subprocess
    import sys

    code = (
        "import sys; from nnunet_semisup.cli import build_parser; build_parser(); "
        "import nnunet_semisup.trainers as t; assert len(t.__all__) > 30; "
        "print(sorted(m for m in ('torch', 'nnunetv2.training.nnUNetTrainer.nnUNetTrainer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_method_package_of_the_repository_is_installed():
    import importlib
    from pathlib import Path

    repo_trainers = Path(__file__).resolve().parents[1] / "trainers"
    methods = sorted(p.parent.name for p in repo_trainers.glob("*/__init__.py"))
    assert "dtml" in methods and "sparsification" in methods
    for method in methods:
        importlib.import_module(f"nnunet_semisup.trainers.{method}")


@pytest.mark.parametrize(
    "old, new",
    [
        (["evaluate", "-ref", "R", "-pred", "P"], ["evaluate", "--ref", "R", "--pred", "P"]),
        (["demo", "--spacing", "3"], ["demo", "--spacing-mm", "3"]),
        (["self-train", "-d", "1", "-c", "3d_fullres", "-f", "0", "--out-id", "9", "--device", "cpu",
          "--disable-tta"],
         ["self-train", "-d", "1", "-c", "3d_fullres", "-f", "0", "--out-id", "9", "-device", "cpu",
          "--disable_tta"]),
        (["benchmark", "--data", "D", "--work-dir", "W", "--labeled", "2", "--test", "1", "--device", "cpu"],
         ["benchmark", "--data", "D", "--work-dir", "W", "--labeled", "2", "--test", "1", "-device", "cpu"]),
        (["pseudo-labels", "-d", "1", "--tr2d", "A", "--tr3d", "B", "--device", "cpu", "--disable-tta"],
         ["pseudo-labels", "-d", "1", "--trainer-2d", "A", "--trainer-3d", "B", "-device", "cpu",
          "--disable_tta"]),
        (["predict-sparse", "-i", "I", "-o", "O", "-d", "1", "--meta-d", "2", "--tr-meta", "M"],
         ["predict-sparse", "-i", "I", "-o", "O", "-d", "1", "--meta-dataset", "2", "--trainer-meta", "M"]),
    ],
)  # fmt: skip
def test_old_flag_spellings_still_work_with_a_deprecation_message(capsys, old, new):
    from nnunet_semisup.cli import build_parser

    parsed_old = vars(build_parser().parse_args(old))
    err = capsys.readouterr().err
    parsed_new = vars(build_parser().parse_args(new))
    assert capsys.readouterr().err == ""
    parsed_old.pop("func"), parsed_new.pop("func")
    assert parsed_old == parsed_new
    renamed = {a for a in old if a.startswith("-")} - set(new)
    assert err.count("is deprecated, use") == len(renamed) > 0


def test_exports_are_exactly_the_trainer_classes_of_the_package():
    """``nnunet_semisup.trainers.__all__`` (read from the method modules' source, without importing them) names
    every nnU-Net trainer class the package defines, and only those; each resolves to the class itself."""
    import importlib
    import inspect
    import pkgutil

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_semisup.trainers as registered

    defined = {}
    for info in pkgutil.walk_packages(registered.__path__, registered.__name__ + "."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__:
                defined[name] = obj
    # the one trainer class that is not a trainer to run: the shared part of WTA pretraining and multi-task
    assert set(defined) - set(registered.__all__) == {"WTATrainerBase"}
    assert set(registered.__all__) <= set(defined)
    assert all(getattr(registered, name) is defined[name] for name in registered.__all__)

"""The built wheel, installed the way users install it, registers our trainers with nnU-Net by itself.

The wheel is built from an sdist of this checkout and installed into a fresh virtual environment. That
environment reuses the running interpreter's packages (torch, nnunetv2) through one ``.pth`` line instead of
reinstalling them; its own site-packages stays first on ``sys.path``, so ``nnunet_semisup`` is imported from the wheel. With
``nnUNet_extTrainer`` unset, nnU-Net's own trainer search must then find our trainers under their real module
path, which only the wheel's ``nnunet_semisup.pth`` can make happen.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# not part of a source distribution: virtual environments, build output, caches, work folders
COPY_IGNORE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
               "demo_work", "*.pyc")  # fmt: skip

# Runs inside the fresh environment: nnU-Net's trainer search, then a pickle round trip (only a class with its
# real module path survives it). The last stdout line is the JSON result; nnU-Net prints its search before it.
SEARCH_SCRIPT = """
import inspect, json, os, pickle
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
found = {}
for name in ("MeanTeacherTrainer", "LabeledOnlyTrainer"):
    cls = recursive_find_trainer_class_by_name(name)
    found[name] = {"module": cls.__module__, "file": inspect.getfile(cls),
                   "pickles": pickle.loads(pickle.dumps(cls)) is cls}
print(json.dumps({"nnUNet_extTrainer": os.environ.get("nnUNet_extTrainer"), "found": found}))
"""


def _source_version() -> str:
    """``__version__`` as written in ``nnunet_semisup/__init__.py`` (the one place the version is defined)."""
    tree = ast.parse((REPO / "nnunet_semisup" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "__version__" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("nnunet_semisup/__init__.py defines no __version__")


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 600) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(args)} exited with {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}"
        f"\n--- stderr ---\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _clean_env() -> dict[str, str]:
    """The test's environment without anything that could register the trainers or redirect imports."""
    env = dict(os.environ)
    for key in ("nnUNet_extTrainer", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(key, None)
    return env


def _build_wheel_from_sdist(tmp_path: Path) -> Path:
    """An sdist of a clean copy of the checkout, then a wheel built from that sdist, as installers do.

    The copy leaves out build folders and stale ``*.egg-info`` (whose file list would hide a file missing from
    the sdist); building through the sdist checks that it carries what the wheel's install hook needs.
    """
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*COPY_IGNORE))
    sdist_dir, dist = tmp_path / "sdist", tmp_path / "dist"
    _run(sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(sdist_dir)!r})",
         cwd=source)  # fmt: skip
    (sdist,) = sdist_dir.glob("*.tar.gz")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
         str(sdist))  # fmt: skip
    (wheel,) = dist.glob("nnunet_semisup-*.whl")
    return wheel


def test_wheel_in_a_fresh_environment_registers_trainers_with_nnunet(tmp_path):
    wheel = _build_wheel_from_sdist(tmp_path)

    version = _source_version()
    assert wheel.name.startswith(f"nnunet_semisup-{version}-"), (wheel.name, version)
    names = set(zipfile.ZipFile(wheel).namelist())
    for member in (
        "nnunet_semisup.pth",
        "nnunet_semisup/_nnunet_ext/nnunet_semisup_trainers.py",
        "nnunet_semisup/trainers/__init__.py",
        "nnunet_semisup/trainers/base.py",
        "nnunet_semisup/planners/__init__.py",
    ):
        assert member in names, f"{member} missing from {wheel.name}"

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    env = _clean_env()
    fresh_site = Path(
        _run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", env=env).strip()
    )
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
         str(wheel))  # fmt: skip
    assert (fresh_site / "nnunet_semisup.pth").is_file(), "pip did not install the .pth file"
    # added after the install: with the outer packages visible, pip would skip ours as already installed;
    # the running interpreter's import path (torch, nnunetv2, ...) after the fresh environment's own packages
    outer = [p for p in sys.path if p and Path(p).is_dir() and Path(p).resolve() != fresh_site.resolve()]
    (fresh_site / "zz_test_outer_site_packages.pth").write_text("\n".join(outer) + "\n")

    result = json.loads(_run(str(python), "-c", SEARCH_SCRIPT, env=env).strip().splitlines()[-1])

    shim_dir = fresh_site / "nnunet_semisup" / "_nnunet_ext"
    assert result["nnUNet_extTrainer"] == str(shim_dir), result["nnUNet_extTrainer"]
    for name, info in result["found"].items():
        assert info["module"].startswith("nnunet_semisup.trainers"), (name, info["module"])
        assert Path(info["file"]).resolve().is_relative_to(fresh_site.resolve()), (name, info["file"])
        assert info["pickles"], f"{name} does not pickle under its module path {info['module']}"

    trainer_dir = _run(str(venv / "bin" / "nnunet-semisup"), "trainer-dir", env=env).strip()
    assert Path(trainer_dir) == shim_dir

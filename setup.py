"""Install hooks: find every package of the three folders, and ship ``nnunet_semisup.pth`` so nnU-Net finds our
trainers right after ``pip install``.

The .pth file only appends our shim folder to the ``nnUNet_extTrainer`` environment variable at interpreter
start (see ``nnunet_semisup/_register.py``). Editable installs do not carry it: export
``nnUNet_extTrainer=$(nnunet-semisup trainer-dir)`` there.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PTH_FILE = "nnunet_semisup.pth"
# installed name -> folder in the repository (the same mapping as package_dir in setup.cfg)
PACKAGE_FOLDERS = {"nnunet_semisup": "nnunet_semisup", "nnunet_semisup.trainers": "trainers",
                   "nnunet_semisup.planners": "planners"}  # fmt: skip
# the folder of one-line shim modules that nnUNet_extTrainer points at: no __init__.py on purpose (nnU-Net imports
# its files under top-level names), so find_packages cannot see it
SHIM_PACKAGE = "nnunet_semisup._nnunet_ext"


def all_packages() -> list[str]:
    """Every folder with an ``__init__.py`` below the three, under its installed name."""
    here = os.path.dirname(os.path.abspath(__file__))
    packages = [SHIM_PACKAGE]
    for name, folder in PACKAGE_FOLDERS.items():
        packages.append(name)
        found = find_packages(os.path.join(here, folder))
        packages += [f"{name}.{sub}" for sub in found if f"{name}.{sub}" not in PACKAGE_FOLDERS]
    return sorted(set(packages))


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        self.copy_file(os.path.join(here, PTH_FILE), os.path.join(self.build_lib, PTH_FILE))


setup(packages=all_packages(), cmdclass={"build_py": BuildPyWithPth})

"""Install hook: ship ``nnunet_semisup.pth`` so nnU-Net finds our trainers right after ``pip install``.

The .pth file only appends our shim folder to the ``nnUNet_extTrainer`` environment variable at interpreter
start (see ``nnunet_semisup/_register.py``). Editable installs do not carry it: export
``nnUNet_extTrainer=$(nnunet-semisup trainer-dir)`` there.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_FILE = "nnunet_semisup.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        self.copy_file(os.path.join(here, PTH_FILE), os.path.join(self.build_lib, PTH_FILE))


setup(cmdclass={"build_py": BuildPyWithPth})

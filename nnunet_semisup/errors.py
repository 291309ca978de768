"""The package's base class for errors caused by the user's data, files or options.

An error of this kind has a message that names the file, case or option at fault and says how to fix it, so the
traceback adds nothing for the user: the command-line tools print the message alone, and the trainers, when such
an error stops ``nnUNetv2_train`` at start, write it to nnU-Net's training log and exit with the message only
(:class:`~nnunet_semisup.trainers.base.UserInputErrorExitMixin`). Any other exception is a bug or an environment
problem and keeps its traceback.
"""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input from the user (data, file names, splits, options). The message names what is wrong and the fix."""


class TrainingInputError(UserInputError, RuntimeError):
    """Bad input found when a trainer starts (dataset, splits, checkpoint or arguments of ``nnUNetv2_train``).

    A ``RuntimeError`` too, as the errors it replaces were."""

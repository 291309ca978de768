"""Argument conventions shared by the verbs of ``nnunet-semisup`` (``cli.py`` and ``trainers/<method>/cli.py``).

Flag spelling: where a flag mirrors an nnU-Net option it is spelled as nnU-Net spells it (``-d``, ``-c``, ``-p``,
``-f``, ``-tr``, ``-np``, ``-npp``, ``-nps``, ``-chk``, ``-step_size``, ``-device``, ``--disable_tta``,
``--save_probabilities``); every other flag is ours and kebab-case (``--out-id``, ``--spacing-mm``). A renamed
flag keeps its old spelling as a hidden alias that still works and says so on stderr (:func:`deprecated_alias`).

This module imports nothing heavy: the parser is built on every call of the command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def report_error(command: str, error: Exception) -> int:
    """Print ``nnunet-semisup COMMAND: error: MESSAGE`` on stderr, for bad input whose message names the file or
    value and the fix (no traceback); returns the command's exit code, 2."""
    print(f"nnunet-semisup {command}: error: {error}", file=sys.stderr)
    return 2


def _with_deprecated_spellings(action: argparse.Action) -> None:
    """Make ``action`` print a deprecation message when it is given under one of its ``deprecated_spellings``."""
    base = type(action)

    class WithDeprecatedSpellings(base):
        def __call__(self, parser, namespace, values, option_string=None) -> None:
            if option_string in self.deprecated_spellings:
                print(
                    f"{parser.prog}: {option_string} is deprecated, use {self.option_strings[0]}",
                    file=sys.stderr,
                )
            super().__call__(parser, namespace, values, option_string)

    action.__class__ = WithDeprecatedSpellings
    action.deprecated_spellings = set()


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept ``old`` as a deprecated spelling of the existing flag ``new`` of ``parser``: it sets the same value
    (and satisfies ``required``), prints a deprecation message on stderr, and is not shown by ``--help``.

    Raises:
        KeyError: ``parser`` has no flag ``new``.
    """
    action = parser._option_string_actions[new]
    if not hasattr(action, "deprecated_spellings"):
        _with_deprecated_spellings(action)
    action.deprecated_spellings.add(old)
    # argparse finds an option by this table; leaving ``old`` out of option_strings keeps it out of the help
    parser._option_string_actions[old] = action


def add_device_arguments(parser: argparse.ArgumentParser, default_np: int = 1) -> None:
    """``-device``, ``--disable_tta`` (nnU-Net's spellings), ``-np`` and ``--no-progress`` of a prediction step
    (old spellings ``--device`` and ``--disable-tta`` deprecated)."""
    parser.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"], help="default: cuda")
    parser.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    parser.add_argument(
        "-np", type=int, default=default_np, help=f"pre/post-processing workers (default: {default_np})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    deprecated_alias(parser, "--device", "-device")
    deprecated_alias(parser, "--disable-tta", "--disable_tta")


# ------------------------------------------------------------------ predict-* verbs of models with a second network
def add_extra_network_predict_parser(
    sub: argparse._SubParsersAction,
    name: str,
    trainer: str,
    sources: tuple[str, ...],
    default_source: str,
    predictor: str,
    **parser_kwargs: str,
) -> None:
    """A ``predict-*`` verb with nnUNetv2_predict's arguments plus ``--source``, run by ``predictor``
    (``"module:Class"``, an :class:`~nnunet_semisup.extra_network_prediction.ExtraNetworkPredictor`, imported
    when the verb runs)."""
    p = sub.add_parser(name, **parser_kwargs)
    p.add_argument("-i", required=True, help="input folder (nnU-Net naming, as for nnUNetv2_predict)")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    p.add_argument("-tr", default=trainer, help=f"trainer name (default: {trainer})")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-f", nargs="+", help="folds (default: all folds found)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name")
    p.add_argument("--source", choices=sources, default=default_source, help=f"default: {default_source}")
    p.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (default: 0.5)")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.add_argument(
        "--save_probabilities", action="store_true", help="also save the class probabilities (.npz, .pkl)"
    )
    p.add_argument("-device", default="cuda", help="cuda, cpu or mps (default: cuda)")
    p.add_argument("-npp", type=int, default=3, help="preprocessing processes (default: 3)")
    p.add_argument("-nps", type=int, default=3, help="export processes (default: 3)")
    p.set_defaults(func=lambda args: _predict_with_extra_network(name, predictor, args))


def _predict_with_extra_network(command: str, predictor: str, args: argparse.Namespace) -> int:
    from nnunet_semisup.nnunet_commands import load_predictor, model_folder, resolve_dataset

    module, class_name = predictor.split(":")
    folder = model_folder(resolve_dataset(args.d), args.tr, args.p, args.c)
    if not os.path.isdir(folder):
        raise SystemExit(f"nnunet-semisup {command}: no trained model in {folder}")
    try:
        loaded = load_predictor(
            folder, args.f, args.device, args.disable_tta, args.chk,
            predictor_class=getattr(importlib.import_module(module), class_name),
            tile_step_size=args.step_size, source=args.source,
        )  # fmt: skip
    except ValueError as e:  # not a model of that method: say so, no traceback
        return report_error(command, e)
    loaded.predict_from_files(
        args.i,
        args.o,
        save_probabilities=args.save_probabilities,
        overwrite=True,
        num_processes_preprocessing=args.npp,
        num_processes_segmentation_export=args.nps,
    )
    return 0

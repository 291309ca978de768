"""DTML's verb of ``nnunet-semisup``: ``predict-dtml`` (prediction with the distance network M_d)."""

from __future__ import annotations

import argparse

from nnunet_semisup.cli_args import add_extra_network_predict_parser


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``predict-dtml`` to ``nnunet-semisup``'s sub-parsers."""
    add_extra_network_predict_parser(
        sub,
        "predict-dtml",
        "DTMLTrainer",
        ("dist", "average"),
        "dist",
        "nnunet_semisup.trainers.dtml.prediction:DualTaskPredictor",
        help="predict with a DTML model's distance network M_d (or the M_s/M_d average)",
        description="nnUNetv2_predict for DTMLTrainer models with M_d's mask (--source dist) or the mean of "
        "M_s's and M_d's probabilities (--source average); nnUNetv2_predict itself predicts with M_s.",
    )

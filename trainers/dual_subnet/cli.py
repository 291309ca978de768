"""The dual-subnet model's verb of ``nnunet-semisup``: ``predict-dual-subnet`` (prediction with subnet B)."""

from __future__ import annotations

import argparse

from nnunet_semisup.cli_args import add_extra_network_predict_parser


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``predict-dual-subnet`` to ``nnunet-semisup``'s sub-parsers."""
    add_extra_network_predict_parser(
        sub,
        "predict-dual-subnet",
        "DualSubnetContrastTrainer",
        ("b", "average"),
        "average",
        "nnunet_semisup.trainers.dual_subnet.prediction:DualSubnetPredictor",
        help="predict with a DualSubnetContrastTrainer model's subnet B (or the mean of both subnets)",
        description="nnUNetv2_predict for DualSubnetContrastTrainer models with subnet B (--source b) or the mean "
        "of both subnets' probabilities (--source average); nnUNetv2_predict itself predicts with subnet A.",
    )

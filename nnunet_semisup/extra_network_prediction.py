"""The part that nnU-Net's predictor lacks for models with a second network saved beside ``network_weights``
(DTML's distance network, the dual-subnet model's subnet B): read that network's weights of every fold from
``semisup_state`` and swap nnU-Net's network for an inference module built from both. Preprocessing, sliding
window, test-time mirroring, fold ensembling and export stay nnU-Net's."""

from __future__ import annotations

import os
from typing import Any

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from torch import nn
from torch._dynamo import OptimizedModule


class ExtraNetworkPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` whose network is :meth:`build_inference_network` of the second network alone or of
    both networks (``source == average_source``).

    Subclasses set ``sources`` (allowed ``source`` values) and ``default_source``, ``state_key`` (the
    ``semisup_state`` entry with the second network's state dict) and ``extra_name`` (its name in errors), ``config_key`` (the ``semisup_state`` entry
    that :meth:`build_inference_network` needs besides weights; equal in all folds), ``extra_prefix`` /
    ``main_prefix`` (the attribute names of the two networks in the inference module), ``command`` and
    ``trainer_hint`` (for errors), and implement :meth:`build_inference_network`.
    """

    sources: tuple[str, ...] = ()
    default_source: str = ""
    average_source: str = "average"
    state_key: str = ""
    extra_name: str = ""
    extra_prefix: str = ""
    main_prefix: str = ""
    config_key: str = ""
    command: str = ""
    trainer_hint: str = ""

    def __init__(self, *args, source: str | None = None, **kwargs) -> None:
        source = self.default_source if source is None else source
        if source not in self.sources:
            raise ValueError(f"source must be one of {self.sources}, got {source!r}")
        super().__init__(*args, **kwargs)
        self.source = source

    def build_inference_network(self, config: Any, main_network: nn.Module | None) -> nn.Module:
        """The module nnU-Net's predictor runs: the second network alone (``main_network`` None) or with the
        planned network (deep supervision off); ``config`` is ``semisup_state[config_key]``."""
        raise NotImplementedError

    def initialize_from_trained_model_folder(
        self,
        model_training_output_dir: str,
        use_folds: tuple[int | str, ...] | None,
        checkpoint_name: str = "checkpoint_final.pth",
    ) -> None:
        # nnU-Net builds the planned network and reads each fold's network_weights; the second network's weights
        # are read here beside them
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        if use_folds is None:
            use_folds = nnUNetPredictor.auto_detect_available_folds(
                model_training_output_dir, checkpoint_name
            )
        if isinstance(use_folds, str):
            use_folds = [use_folds]
        parameters, config = [], None
        for fold, main_weights in zip(use_folds, self.list_of_parameters):
            path = os.path.join(model_training_output_dir, f"fold_{fold}", checkpoint_name)
            state = torch.load(path, map_location="cpu", weights_only=False).get("semisup_state") or {}
            if self.state_key not in state:
                raise ValueError(
                    f"{path} has no {self.extra_name} (semisup_state['{self.state_key}']): {self.command} needs a model trained with "
                    f"{self.trainer_hint} or one of its variants"
                )
            if parameters and state[self.config_key] != config:
                raise ValueError(
                    f"{path}: the folds differ in semisup_state['{self.config_key}'] ({config} and "
                    f"{state[self.config_key]}); ensemble folds of one model only"
                )
            config = state[self.config_key]
            weights = {f"{self.extra_prefix}.{key}": value for key, value in state[self.state_key].items()}
            if self.source == self.average_source:
                weights.update({f"{self.main_prefix}.{key}": value for key, value in main_weights.items()})
            parameters.append(weights)

        main_network = self.network
        if isinstance(main_network, OptimizedModule):
            main_network = main_network._orig_mod
        self.network = self.build_inference_network(
            config, main_network if self.source == self.average_source else None
        )
        self.network.load_state_dict(parameters[0])
        self.list_of_parameters = parameters

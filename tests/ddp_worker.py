"""One rank of the 2-process DDP job of ``tests/test_ddp.py`` (run as a script, not collected by pytest).

``nnUNetv2_train -num_gpus N`` runs ``trainer.run_training()`` in N processes joined by an NCCL process group on
N GPUs. Here the same trainer code runs on CPU with the gloo backend: the only substitutions are the device
(nnU-Net sets ``cuda:<rank>`` when a process group exists) and nnU-Net's own DDP wrap, whose ``device_ids`` only
exist for GPU modules (and, for ``-pretrained_weights``, the ``cuda:<rank>`` map location nnU-Net loads the
checkpoint to). Everything of ours (extra wraps, teachers, unlabeled sharding, rank-0 writes, the
numeric guard's all-reduce, the per-epoch all-gather of logged terms) runs unchanged.

Usage: ``RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python ddp_worker.py OUT_DIR FOLD T1,T2,...``
where each ``T`` is a trainer name, optionally ``NAME@DATASET`` (default 501) or ``NAME@DATASET@CHECKPOINT`` (loaded
as ``nnUNetv2_train -pretrained_weights CHECKPOINT`` loads it; a checkpoint an earlier trainer of the list wrote
is there: the ranks wait for each other between trainers).
Writes ``OUT_DIR/<trainer>_rank<r>.pt`` with every module's state and what the rank sampled.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel


def _cpu_ddp(module: torch.nn.Module, device_ids=None, **kwargs) -> DistributedDataParallel:
    """nnU-Net's ``DDP(network, device_ids=[rank])`` for a CPU module (``device_ids`` must be None there)."""
    return DistributedDataParallel(module, **kwargs)


_REAL_TORCH_LOAD = torch.load


def _cpu_load(*args, map_location=None, **kwargs):
    """``torch.load`` for nnU-Net's ``load_pretrained_weights``, which maps to ``cuda:<rank>`` under DDP: CPU."""
    if isinstance(map_location, torch.device) and map_location.type == "cuda":
        map_location = torch.device("cpu")
    return _REAL_TORCH_LOAD(*args, map_location=map_location, **kwargs)


def main() -> None:
    out_dir, fold, trainer_names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    torch.manual_seed(1234 + rank)  # ranks start from different random weights: DDP must broadcast rank 0's

    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
    from nnunetv2.run.run_training import get_trainer_from_args

    import nnunet_semisup.trainers.base as base

    nnunet_trainer_module.DDP = _cpu_ddp
    writes: list[str] = []
    atomic_torch_save = base.atomic_torch_save

    def recording_save(obj, filename):
        writes.append(os.path.basename(filename))
        atomic_torch_save(obj, filename)

    base.atomic_torch_save = recording_save

    for spec in trainer_names:
        parts = spec.split("@")
        name = parts[0]
        dataset = parts[1] if len(parts) > 1 else "501"
        pretrained = parts[2] if len(parts) > 2 else ""
        writes.clear()
        trainer = get_trainer_from_args(dataset, "3d_fullres", fold, name, device=torch.device("cpu"))
        assert trainer.is_ddp, "the trainer does not see the process group"
        trainer.device = torch.device("cpu")
        trainer.grad_scaler = None
        if pretrained:  # nnU-Net's maybe_load_checkpoint(..., pretrained_weights_file) on every rank
            from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

            argv = list(sys.argv)
            sys.argv = [sys.argv[0], "-pretrained_weights", pretrained]  # the trainer reads it from there
            trainer.initialize()
            torch.load = _cpu_load
            try:
                load_pretrained_weights(trainer.network, pretrained)
            finally:
                torch.load = _REAL_TORCH_LOAD
        trainer.run_training()
        if pretrained:
            sys.argv = argv
        dist.barrier()  # rank 0's checkpoints are on disk before the next trainer starts
        modules = {
            attribute: base.unwrap_network(module).state_dict()
            for attribute, module in vars(trainer).items()
            if isinstance(module, torch.nn.Module) and any(True for _ in module.state_dict())
        }
        torch.save(
            {
                "modules": modules,
                "unlabeled_case_ids": list(trainer.unlabeled_case_ids),
                "global_step": trainer.global_step,
                "checkpoint_writes": list(writes),
                "batch_size": trainer.batch_size,
            },
            os.path.join(out_dir, f"{name}_rank{rank}.pt"),
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

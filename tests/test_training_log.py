"""The extra curves of ``SemiSupLocalLogger`` across a resume, including checkpoints written before log keys were
renamed to the one scheme (``loss_<term>``, ``<term>_weight``)."""

from __future__ import annotations

import copy

from nnunet_semisup.training_log import RENAMED_LOG_KEYS, SemiSupLocalLogger

KEYS = ("loss_sup", "loss_contrast", "contrast_weight", "cubes_anchored")


def _log_epoch(logger: SemiSupLocalLogger, epoch: int, values: dict[str, float]) -> None:
    for key in ("train_losses", "val_losses", "lrs", "epoch_start_timestamps", "epoch_end_timestamps"):
        logger.log(key, float(epoch), epoch)
    logger.log("mean_fg_dice", 0.5, epoch)
    logger.log("ema_fg_dice", 0.5, epoch)
    logger.log("dice_per_class_or_region", [0.5], epoch)
    for key, value in values.items():
        logger.log(key, value, epoch)


def test_checkpoint_with_earlier_log_key_names_resumes_under_the_new_names(tmp_path):
    # the logging entry of a SECLTrainer checkpoint of two epochs, written with the earlier key names
    earlier = SemiSupLocalLogger(("loss_sup", "loss_con", "con_weight", "cubes_anchored"))
    for epoch in range(2):
        _log_epoch(earlier, epoch, {"loss_sup": 1.0 - epoch, "loss_con": 5.0 + epoch, "con_weight": 0.1 * epoch,
                                    "cubes_anchored": 1.0})  # fmt: skip
    checkpoint = copy.deepcopy(earlier.get_checkpoint())

    resumed = SemiSupLocalLogger(KEYS)
    resumed.load_checkpoint(checkpoint)
    logging = resumed.my_fantastic_logging
    assert "loss_con" not in logging and "con_weight" not in logging
    assert logging["loss_contrast"] == [5.0, 6.0] and logging["contrast_weight"] == [0.0, 0.1]
    # the next epoch extends every curve, and the progress plot shows all three epochs
    _log_epoch(
        resumed, 2, {"loss_sup": -1.0, "loss_contrast": 7.0, "contrast_weight": 0.2, "cubes_anchored": 1.0}
    )
    assert {len(v) for v in logging.values()} == {3}
    resumed.plot_progress_png(str(tmp_path))
    assert (tmp_path / "progress.png").is_file()


def test_a_key_without_history_is_padded_and_renamed_keys_point_into_the_scheme():
    resumed = SemiSupLocalLogger(("loss_sup", "wta_weight"))
    earlier = SemiSupLocalLogger(("loss_seg",))
    _log_epoch(earlier, 0, {"loss_seg": 2.0})
    resumed.load_checkpoint(copy.deepcopy(earlier.get_checkpoint()))
    assert resumed.my_fantastic_logging["loss_sup"] == [2.0]
    assert len(resumed.my_fantastic_logging["wta_weight"]) == 1  # NaN for the epoch before the key existed
    assert all(new.startswith("loss_") or new.endswith("_weight") for new in RENAMED_LOG_KEYS.values())

"""Extra per-epoch curves (unsupervised losses, ramp-up weights) in nnU-Net's logger and progress.png."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt
from nnunetv2.training.logging.nnunet_logger import LocalLogger

# log keys under their earlier names -> their names in the one scheme (loss_<term>, <term>_weight with term sup,
# cons, contrast, unsup, wta, ...): the logging of a checkpoint written before the renaming resumes under the new
# names, so each curve keeps its history and no list stops growing (nnU-Net plots as many epochs as the shortest)
RENAMED_LOG_KEYS = {
    "loss_seg": "loss_sup",
    "loss_con": "loss_contrast",
    "con_weight": "contrast_weight",
    "unlabeled_weight": "unsup_weight",
    "gamma": "wta_weight",
}


class SemiSupLocalLogger(LocalLogger):
    """nnU-Net's ``LocalLogger`` with one list per extra key, saved in the checkpoint's ``logging`` entry.

    ``progress.png`` keeps nnU-Net's three panels and gets a fourth below them with the extra curves.
    """

    def __init__(self, extra_keys: tuple[str, ...] = (), verbose: bool = False) -> None:
        super().__init__(verbose)
        self.extra_keys = tuple(extra_keys)
        for key in self.extra_keys:
            self.my_fantastic_logging[key] = []

    def load_checkpoint(self, checkpoint: dict) -> None:
        super().load_checkpoint(checkpoint)
        for old, new in RENAMED_LOG_KEYS.items():
            if old in self.my_fantastic_logging and new in self.extra_keys:
                self.my_fantastic_logging[new] = self.my_fantastic_logging.pop(old)
        # a checkpoint written before a key existed: pad so that every list has one value per epoch
        n_epochs = len(self.my_fantastic_logging.get("train_losses", []))
        for key in self.extra_keys:
            values = self.my_fantastic_logging.setdefault(key, [])
            values.extend([math.nan] * (n_epochs - len(values)))

    def plot_progress_png(self, output_folder: str) -> None:
        super().plot_progress_png(output_folder)
        if not self.extra_keys:
            return
        epochs = min(len(v) for v in self.my_fantastic_logging.values())
        fig, ax = plt.subplots(1, 1, figsize=(30, 18))
        for key in self.extra_keys:
            ax.plot(range(epochs), self.my_fantastic_logging[key][:epochs], label=key, linewidth=4)
        ax.set_xlabel("epoch", fontsize=30)
        ax.set_ylabel("semi-supervised terms", fontsize=30)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.tick_params(labelsize=26)
        ax.legend(loc=(0, 1), fontsize=28, ncol=len(self.extra_keys))
        fig.tight_layout()
        extra_path = os.path.join(output_folder, "progress_semisup_panel.png")
        fig.savefig(extra_path, dpi=100)
        plt.close(fig)
        _stack_vertically(os.path.join(output_folder, "progress.png"), extra_path)
        os.remove(extra_path)


def _stack_vertically(top_path: str, bottom_path: str) -> None:
    """Append the image at ``bottom_path`` below the one at ``top_path`` (in place, widths matched)."""
    from PIL import Image

    with Image.open(top_path) as top, Image.open(bottom_path) as bottom:
        if bottom.width != top.width:
            bottom = bottom.resize((top.width, round(bottom.height * top.width / bottom.width)))
        combined = Image.new("RGB", (top.width, top.height + bottom.height), "white")
        combined.paste(top.convert("RGB"), (0, 0))
        combined.paste(bottom.convert("RGB"), (0, top.height))
    tmp = top_path + ".tmp.png"
    combined.save(tmp)
    os.replace(tmp, top_path)

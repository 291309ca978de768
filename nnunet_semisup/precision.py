"""Float32 regions inside mixed-precision (AMP) training steps.

nnU-Net trains under ``torch.autocast`` on CUDA (float16), which runs matrix products and convolutions in half
precision even when their inputs are float32. Losses whose value lives in small differences (contrastive
similarities over a temperature, sharp signed-distance sigmoids, entropies, softmax-based pseudo-labels) are
computed with autocast turned off and their inputs cast to float32, as ``torch.amp``'s documentation
recommends for numerically sensitive regions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def full_precision(function: F) -> F:
    """Decorator: ``function`` runs with autocast off on the device type of its first tensor argument (so every
    op inside runs in the dtype of its inputs; the function casts them to float32). Outside autocast it is a
    no-op.

    Raises nothing itself; without a tensor argument ``function`` runs unchanged.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import torch  # here, so that modules without torch at import time can use the decorator

        device = next((a.device for a in (*args, *kwargs.values()) if torch.is_tensor(a)), None)
        if device is None or not torch.is_autocast_enabled(device.type):
            return function(*args, **kwargs)
        with torch.autocast(device.type, enabled=False):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

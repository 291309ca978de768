"""Running the stock console scripts from our own commands (demo, self-train): progress lines on screen,
the whole output in a log file, a clear error naming the log when a script fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

PROGRESS_MARKERS = (
    "Epoch ",
    "Epoch time",
    "semi-supervised terms",
    "Pseudo dice",
    "Mean Validation Dice",
    "Predicting ",
    "Traceback",
)


class Console:
    """Runs console scripts of this interpreter's environment (``nnUNetv2_*``, ``nnunet-semisup``).

    Args:
        env: environment of the scripts (default: this process's), with ``PYTHONUNBUFFERED=1`` added.
        error: exception raised when a script exits non-zero.
        markers: lines containing one of these are echoed to the screen.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        error: type[Exception] = RuntimeError,
        markers: tuple[str, ...] = PROGRESS_MARKERS,
    ) -> None:
        self.t0 = time.time()
        self.bin = Path(sys.executable).parent
        self.env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
        self.error = error
        self.markers = markers

    def say(self, message: str) -> None:
        """Print ``message`` with the seconds elapsed since this console was made."""
        print(f"[{time.time() - self.t0:6.0f} s] {message}", flush=True)

    def run(self, log_path: Path, *args: str) -> None:
        """Run ``args`` (script name first), appending its output to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        exe = self.bin / args[0]
        self.say(f"$ {' '.join(args)}   (log: {log_path})")
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                [str(exe) if exe.exists() else args[0], *args[1:]],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for line in proc.stdout:
                log.write(line)
                if any(marker in line for marker in self.markers):
                    print("    " + line.rstrip()[:150], flush=True)
            if proc.wait() != 0:
                raise self.error(f"{args[0]} failed (exit {proc.returncode}); see {log_path}")

"""Memory of the unlabeled data path with thousands of unlabeled cases (lazy loading keeps the RSS bounded).

For each case count N, a fresh process builds what a trainer builds over N preprocessed unlabeled cases (nnU-Net's
lazy blosc2 dataset and our ``UnlabeledDataLoader``; augmentation is left out, its memory does not depend on N)
and draws ``--batches`` batches. Printed per N: resident memory (RSS) after
imports, after set-up, and the peak while drawing batches, each as the increase over the process after imports,
plus the ratio of the peak increase to that of the smallest N. Bounded memory means the increases stay flat as N
grows: only the cases of the current batch are opened (memory-mapped), never the whole set.

Cases are small synthetic volumes written with nnU-Net's own ``nnUNetDatasetBlosc2.save_case`` into a temporary
folder (``--keep`` to reuse them). Example::

    python benchmarks/unlabeled_memory.py --cases 100,1000,5000 --batches 100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("nnUNet_n_proc_DA", "0")


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """High-water mark of the resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_cases(folder: str, n: int, shape: tuple[int, int, int]) -> None:
    """``n`` preprocessed unlabeled cases ``u00000`` ... as nnU-Net writes them (blosc2 data, empty seg, pkl)."""
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        identifier = f"u{i:05d}"
        if os.path.isfile(os.path.join(folder, identifier + ".pkl")):
            continue
        data = rng.standard_normal((1, *shape), dtype=np.float32)
        seg = np.zeros((1, *shape), dtype=np.int8)
        properties = {"spacing": [1.0, 1.0, 1.0], "shape_after_cropping_and_before_resampling": shape,
                      "class_locations": {}}  # fmt: skip
        whole = (1, *shape)  # one chunk and block per case: the cases are tiny
        nnUNetDatasetBlosc2.save_case(data, seg, properties, os.path.join(folder, identifier), chunks=whole,
                                      blocks=whole, chunks_seg=whole, blocks_seg=whole)  # fmt: skip


def measure(folder: str, n: int, batches: int, patch: tuple[int, int, int], batch_size: int) -> dict:
    """Run in a fresh process: RSS of set-up and of drawing ``batches`` batches over the first ``n`` cases."""
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_semisup.data.loader import UnlabeledDataLoader

    base = rss_mb()
    start = time.time()
    ids = [f"u{i:05d}" for i in range(n)]
    dataset = nnUNetDatasetBlosc2(folder, ids)
    loader = UnlabeledDataLoader(
        dataset, batch_size, patch, patch, LabelManager({"background": 0, "x": 1}, None), transforms=None
    )
    setup = rss_mb()
    seen = set()
    for _ in range(batches):
        batch = next(loader)
        seen.update(batch["keys"])
        assert np.isfinite(batch["data"]).all()
    return {
        "cases": n,
        "after_setup_mb": setup - base,
        "peak_mb": peak_rss_mb() - base,
        "distinct_cases_drawn": len(seen),
        "seconds": time.time() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="100,1000,5000", help="comma-separated case counts")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--shape", type=int, default=24, help="edge of the synthetic cubes")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--folder", help="where the cases are written (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written cases")
    parser.add_argument("--_measure", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    patch = (args.patch,) * 3

    if args._measure is not None:
        print(json.dumps(measure(args.folder, args._measure, args.batches, patch, args.batch_size)))
        return

    counts = sorted(int(c) for c in args.cases.split(","))
    folder = args.folder or tempfile.mkdtemp(prefix="unlabeled_memory_")
    t0 = time.time()
    write_cases(folder, counts[-1], (args.shape,) * 3)
    print(f"{counts[-1]} cases of {args.shape}^3 in {folder} ({time.time() - t0:.0f} s to write)")
    rows = []
    for n in counts:
        out = subprocess.run(
            [sys.executable, __file__, "--folder", folder, "--_measure", str(n), "--batches", str(args.batches),
             "--batch-size", str(args.batch_size), "--patch", str(args.patch)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = rows[0]["peak_mb"] or 1e-9
    print(
        f"{'cases':>7} {'set-up MiB':>11} {'peak MiB':>9} {'peak / first':>13} {'cases drawn':>12} {'s':>6}"
    )
    for r in rows:
        print(f"{r['cases']:>7} {r['after_setup_mb']:>11.1f} {r['peak_mb']:>9.1f} {r['peak_mb'] / first:>13.2f} "
              f"{r['distinct_cases_drawn']:>12} {r['seconds']:>6.1f}")  # fmt: skip
    print("(MiB above the process after imports; flat = memory does not grow with the number of cases)")
    if not args.keep and not args.folder:
        import shutil

        shutil.rmtree(folder)


if __name__ == "__main__":
    main()

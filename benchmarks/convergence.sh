#!/usr/bin/env bash
# Convergence study: labeled-only nnU-Net (LabeledOnlyTrainer) at the smallest labeled counts and on every
# non-test case, one complete training per schedule length (nnU-Net's poly learning rate decays to zero at the
# end of each run, so a shorter run is not a checkpoint of a longer one). Each schedule is its own resumable
# `nnunet-semisup benchmark` work folder with the same data, test set, unlabeled pool and plans; run it again
# to continue. Then `python benchmarks/convergence_report.py "$WORK"` draws Dice against iterations.
# With ARCHIVE=DIR each schedule's report and run summaries are also copied to DIR/iters<N> (the committed
# results live in benchmarks/results/convergence_2mm); `cp -r DIR/. "$WORK/"` restores them on a new machine, and
# the archived runs count as finished (see `nnunet-semisup benchmark --help`).
#
#   WORK=/path/to/work bash benchmarks/convergence.sh            # CPU, 2 mm plans (docs/benchmarks.md)
#   DEVICE=cuda SPACING=0 ITERS="25000 50000 100000" WORK=... bash benchmarks/convergence.sh   # a GPU, nnU-Net's plans
set -euo pipefail
DATA=${DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/msd_hippocampus}
WORK=${WORK:?set WORK to a folder for the benchmark work folders}
ITERS=${ITERS:-"1000 2000 4000"}   # iterations per run; 100 iterations an epoch
LABELED=${LABELED:-2,4}
SEEDS=${SEEDS:-0}
TEST=${TEST:-40}
UNLABELED=${UNLABELED:-100}
SPACING=${SPACING:-2}
DEVICE=${DEVICE:-cpu}
TRAINERS=${TRAINERS:-LabeledOnlyTrainer}
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-1} nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-1}
for iters in $ITERS; do
    nnunet-semisup benchmark --data "$DATA" --work-dir "$WORK/iters$iters" --labeled "$LABELED" \
        --test "$TEST" --unlabeled "$UNLABELED" --full --seeds "$SEEDS" --trainers "$TRAINERS" \
        --schedule "epochs=$((iters / 100)),iters=100,val_iters=2" --spacing-mm "$SPACING" \
        -device "$DEVICE" --label-names anterior,posterior -np 2 ${ARCHIVE:+--archive "$ARCHIVE/iters$iters"}
done

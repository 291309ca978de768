#!/usr/bin/env bash
# The learning curve of every trainer against labeled-only nnU-Net at the converged schedule of
# benchmarks/convergence.sh (docs/benchmarks.md): the smallest labeled counts + the fully labeled bound,
# seeds 0, 1, 2 (each seed draws other labeled cases), one resumable `nnunet-semisup benchmark` work folder.
# The runner goes seed by seed, the smallest count first within a seed (LABELED=2 finishes every seed of the
# smallest count first). Run it again to
# continue; with ARCHIVE=DIR the report and run summaries are copied to DIR after every call (committed under
# benchmarks/results/learning_curve_2mm; `cp -r DIR/. "$WORK/"` restores them on a new machine).
#
#   WORK=/path/to/work ARCHIVE=benchmarks/results/learning_curve_2mm nice -n 19 bash benchmarks/learning_curve.sh
#   (on a new machine first: mkdir -p WORK && cp -r benchmarks/results/learning_curve_2mm/. WORK/)
#   DEVICE=cuda SPACING=0 ITERS=250000 WORK=... bash benchmarks/learning_curve.sh   # a GPU: nnU-Net's plans, 1000 epochs
# FULL=0 leaves out the fully labeled bound: its labeled set is the same for every seed, so its seeds are only
# repeats of one training, and the gap a trainer closes is measured against the mean of the bound's runs that exist.
# REPORT_ONLY=1 trains nothing: it writes the report of the finished runs (and, with ARCHIVE, archives them).
set -euo pipefail
DATA=${DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/msd_hippocampus}
WORK=${WORK:?set WORK to a folder for the benchmark work folder}
ITERS=${ITERS:-2000}   # the convergence study: labeled-only plateaus at 2000 with 2 labeled cases; 100 an epoch
LABELED=${LABELED:-2,4}
SEEDS=${SEEDS:-0,1,2}
TEST=${TEST:-40}
UNLABELED=${UNLABELED:-100}
SPACING=${SPACING:-2}
DEVICE=${DEVICE:-cpu}
TRAINERS=${TRAINERS:-LabeledOnlyTrainer,FixMatchTrainer,MeanTeacherTrainer,UniMatchTrainer,BCPTrainer,SECLTrainer,DTMLTrainer,DualSubnetContrastTrainer,WTAMultiTaskTrainer,self-train}
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-1} nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-1}
nnunet-semisup benchmark --data "$DATA" --work-dir "$WORK" --labeled "$LABELED" --test "$TEST" \
    --unlabeled "$UNLABELED" $([ "${FULL:-1}" = 0 ] || echo --full) --seeds "$SEEDS" --trainers "$TRAINERS" \
    --schedule "epochs=$((ITERS / 100)),iters=100,val_iters=2" --spacing-mm "$SPACING" -device "$DEVICE" \
    --label-names anterior,posterior -np 2 ${ARCHIVE:+--archive "$ARCHIVE"} \
    $([ "${REPORT_ONLY:-0}" = 1 ] && echo --report-only)

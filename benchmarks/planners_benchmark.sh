#!/usr/bin/env bash
# Converged Dice with the semi-supervised plans (docs/planners.md): the learning curve's protocol
# (benchmarks/learning_curve.sh: 2 mm, 2000 iterations, 40 test cases, 100 unlabeled, seeds 0, 1, 2) with
# plans from `nnunet-semisup plan-and-preprocess` (2 labeled + 100 unlabeled images) instead of nnU-Net's
# planner on the 2 labeled cases, for LabeledOnlyTrainer and BCPTrainer (the cheapest semi-supervised trainer per
# iteration of the strong-weak family); then the paired comparison with
# the learning curve's runs of the same trainers, labeled draws and test cases (benchmarks/compare_plans.py).
#
#   WORK=/path/to/work REFERENCE=/path/to/learning_curve_work ARCHIVE=benchmarks/results/planners_2mm \
#       nice -n 19 bash benchmarks/planners_benchmark.sh
#   (REFERENCE may be the archive benchmarks/results/learning_curve_2mm; on a new machine first:
#    mkdir -p WORK && cp -r benchmarks/results/planners_2mm/. WORK/)
set -euo pipefail
DATA=${DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/msd_hippocampus}
WORK=${WORK:?set WORK to a folder for the benchmark work folder}
REFERENCE=${REFERENCE:-$(dirname "$0")/results/learning_curve_2mm}
ITERS=${ITERS:-2000}
LABELED=${LABELED:-2}
SEEDS=${SEEDS:-0,1,2}
TRAINERS=${TRAINERS:-LabeledOnlyTrainer,BCPTrainer}
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-1} nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-1}
nnunet-semisup benchmark --data "$DATA" --work-dir "$WORK" --labeled "$LABELED" --test 40 --unlabeled 100 \
    --seeds "$SEEDS" --trainers "$TRAINERS" --schedule "epochs=$((ITERS / 100)),iters=100,val_iters=2" \
    --spacing-mm 2 --semisup-plans -device cpu --label-names anterior,posterior -np 2 ${ARCHIVE:+--archive "$ARCHIVE"}
python "$(dirname "$0")/compare_plans.py" "$REFERENCE" "$WORK" --trainers "$TRAINERS"

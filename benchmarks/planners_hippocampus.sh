#!/usr/bin/env bash
# Plans side by side on MSD Hippocampus (docs/planners.md): nnU-Net's planner on 4 labeled cases, the
# semi-supervised planner on the same 4 labeled + 100 unlabeled cases, and nnU-Net's planner on all 188 non-test
# cases labeled; each with ExperimentPlanner and nnUNetPlannerResEncM, at the native 1 mm and at 2 mm. Planning
# only (no preprocessing, no training). Prints the table of benchmarks/planners_table.py.
#
#   WORK=/tmp/planners_hippocampus bash benchmarks/planners_hippocampus.sh
set -euo pipefail
DATA=${DATA:-$(dirname "$0")/../../shared/data/msd_hippocampus}
WORK=${WORK:?set WORK to a folder for the raw and preprocessed datasets}
NP=${NP:-2}
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed nnUNet_results=$WORK/results
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
FEW=601 ALL=602
[ -d "$nnUNet_raw/Dataset${FEW}_Hippo4L100U" ] || nnunet-semisup make-benchmark --images "$DATA/images" \
    --labels "$DATA/labels" --labeled 4 --unlabeled 100 --test 20 --out-id $FEW --name Hippo4L100U --link
[ -d "$nnUNet_raw/Dataset${ALL}_Hippo188L" ] || nnunet-semisup make-benchmark --images "$DATA/images" \
    --labels "$DATA/labels" --labeled 188 --unlabeled 0 --test 20 --out-id $ALL --name Hippo188L --link
for d in $FEW $ALL; do nnUNetv2_extract_fingerprint -d $d -np "$NP" --no_pbar; done
for pl in ExperimentPlanner nnUNetPlannerResEncM; do
    for spacing in native 2mm; do
        extra=() suffix=""
        if [ $spacing = 2mm ]; then extra=(-overwrite_target_spacing 2 2 2); suffix=_2mm; fi
        stock=$([ $pl = ExperimentPlanner ] && echo nnUNetPlans || echo nnUNetResEncUNetMPlans)
        semisup=$([ $pl = ExperimentPlanner ] && echo nnUNetSemiSupPlans || echo nnUNetSemiSupResEncUNetMPlans)
        for d in $FEW $ALL; do
            nnUNetv2_plan_experiment -d $d -pl $pl "${extra[@]}" -overwrite_plans_name "$stock$suffix" > /dev/null
        done
        nnunet-semisup plan-and-preprocess -d $FEW -pl $pl --no_pp -npfp "$NP" --no_pbar "${extra[@]}" \
            -overwrite_plans_name "$semisup$suffix" > /dev/null
    done
done
python "$(dirname "$0")/planners_table.py" "$nnUNet_preprocessed" $FEW $ALL

#!/usr/bin/env bash
# Annotation sparsification on the hippocampus demo benchmark (Dataset504_Hippocampus, plans nnUNetPlans_demo2mm,
# 8 labeled cases, fold all, shared schedule): 3D base model on RA vs EIA sparse labels (s_10) vs dense labels,
# then the "with self-training" arms (2D base model, pseudo-labels, fused-label nnU-Net, meta-model).
# Usage: WORK=/path/with/a/copy/of/hippo_demo bash benchmarks/sparse_hippocampus.sh   (run from the repository)
set -euo pipefail
: "${WORK:?set WORK to a writable copy of the hippo_demo folder (nnUNet_raw, nnUNet_preprocessed)}"
export nnUNet_raw=$WORK/nnUNet_raw nnUNet_preprocessed=$WORK/nnUNet_preprocessed nnUNet_results=$WORK/results
export nnUNet_n_proc_DA=1 nnUNet_compile=f nnUNet_def_n_proc=1
export nnUNet_semisup_schedule=${nnUNet_semisup_schedule:-epochs=8,iters=40,val_iters=2}
P=nnUNetPlans_demo2mm
REPO=$(pwd)
cd "$WORK"
mkdir -p logs pred results
# the plans' 2 mm spacing, applied to the raw training cases first (single annotated slices would not survive
# nnU-Net's resampling of the ignore label)
python "$REPO/benchmarks/resample_raw.py" "$nnUNet_raw/Dataset504_Hippocampus" "$nnUNet_raw/Dataset541_Hippo2mm" --spacing 2
nnunet-semisup select-slices -d 541 --budget 10 --strategy ra -o plan_ra_s10.json --no-progress
nnunet-semisup select-slices -d 541 --budget 10 --strategy eia -o plan_eia_s10.json --no-progress
nnunet-semisup sparsify -d 541 --plan plan_ra_s10.json --out-id 542 --name Hippo2mmRA10 --link --no-progress
nnunet-semisup sparsify -d 541 --plan plan_eia_s10.json --out-id 543 --name Hippo2mmEIA10 --link --no-progress
for D in Dataset541_Hippo2mm Dataset542_Hippo2mmRA10 Dataset543_Hippo2mmEIA10; do
  mkdir -p "$nnUNet_preprocessed/$D"
  nnUNetv2_move_plans_between_datasets -s Dataset504_Hippocampus -t $D -sp $P -tp $P
  cp "$nnUNet_raw/$D/dataset.json" "$nnUNet_preprocessed/$D/dataset.json"
  cp "$nnUNet_preprocessed/Dataset504_Hippocampus/dataset_fingerprint.json" "$nnUNet_preprocessed/$D/"
  nnUNetv2_preprocess -d "${D:7:3}" -plans_name $P -c 3d_fullres -np 1
done
for D in 541 542 543; do
  nnUNetv2_train $D 3d_fullres all -tr LabeledOnlyTrainer -p $P -device cpu > logs/train_$D.log 2>&1
  nnUNetv2_predict -i "$nnUNet_raw/Dataset504_Hippocampus/imagesTs" -o pred/$D -d $D -c 3d_fullres \
    -tr LabeledOnlyTrainer -p $P -f all -device cpu -npp 1 -nps 1 --disable_tta > logs/predict_$D.log 2>&1
  nnunet-semisup evaluate --ref "$nnUNet_raw/Dataset504_Hippocampus/labelsTs" --pred pred/$D \
    --labels-json "$nnUNet_raw/Dataset504_Hippocampus/dataset.json"
done
# with self-training, per sparse dataset (RA 542 -> fused 552, meta 562; EIA 543 -> fused 553, meta 563)
TS="$nnUNet_raw/Dataset504_Hippocampus/imagesTs"
evaluate() {
  nnunet-semisup evaluate --ref "$nnUNet_raw/Dataset504_Hippocampus/labelsTs" --pred "$1" \
    --labels-json "$nnUNet_raw/Dataset504_Hippocampus/dataset.json"
}
for D in 542 543; do
  F=$((D + 10)); M=$((D + 20))
  nnUNetv2_train $D 3d_fullres all -tr SparseMultiPlane2DTrainer -p $P -device cpu > logs/train_${D}_2d.log 2>&1
  nnUNetv2_predict -i "$TS" -o pred/${D}_2d -d $D -c 3d_fullres -tr SparseMultiPlane2DTrainer -p $P -f all \
    -device cpu -npp 1 -nps 1 --disable_tta > logs/predict_${D}_2d.log 2>&1   # the 2D model alone (xy)
  evaluate pred/${D}_2d
  nnunet-semisup pseudo-labels -d $D -f all -p $P --fused-id $F --meta-id $M -device cpu --disable_tta --no-progress
  FN=$(basename "$(ls -d "$nnUNet_raw"/Dataset${F}_*)")
  mkdir -p "$nnUNet_preprocessed/$FN"
  nnUNetv2_move_plans_between_datasets -s $D -t $F -sp $P -tp $P
  cp "$nnUNet_raw/$FN/dataset.json" "$nnUNet_preprocessed/$FN/dataset.json"
  cp "$nnUNet_preprocessed/$(basename "$(ls -d "$nnUNet_raw"/Dataset${D}_*)")/dataset_fingerprint.json" \
    "$nnUNet_preprocessed/$FN/"
  nnUNetv2_preprocess -d $F -plans_name $P -c 3d_fullres -np 1
  nnUNetv2_preprocess -d $M -plans_name $P -c 3d_fullres -np 1   # plans written by pseudo-labels --meta-id
  # simple variant: plain nnU-Net on the fused pseudo-labels
  nnUNetv2_train $F 3d_fullres all -tr LabeledOnlyTrainer -p $P -device cpu > logs/train_$F.log 2>&1
  nnUNetv2_predict -i "$TS" -o pred/$F -d $F -c 3d_fullres -tr LabeledOnlyTrainer -p $P -f all \
    -device cpu -npp 1 -nps 1 --disable_tta > logs/predict_$F.log 2>&1
  evaluate pred/$F
  # meta-model and the cascade
  nnUNetv2_train $M 3d_fullres all -tr SelfTrainingMetaTrainer -p $P -device cpu > logs/train_$M.log 2>&1
  nnunet-semisup predict-sparse -i "$TS" -o pred/$M -d $D --meta-dataset $M -p $P -f all -device cpu --disable_tta \
    --no-progress > logs/predict_$M.log 2>&1
  evaluate pred/$M
done

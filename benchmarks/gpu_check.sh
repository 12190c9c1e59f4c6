#!/usr/bin/env bash
# One prepared GPU run (H100/H200): bare-model figures for wide_resnet50_2 at 256 px and end-to-end WSIEngine.predict
# on a large synthetic slide against the bare model and anomalib's stock PNG path. Figures land in $OUT (JSON).
#
#   on the GPU machine (no internet, no anomalib): carry .whl (see CONTRIBUTING.md) and run
#   bash benchmarks/gpu_check.sh
#   SMOKE=1 bash benchmarks/gpu_check.sh     # the same steps on CPU with tiny settings, to check the script here
#   PART=1 / PART=2: only the uncompiled steps / only the compiled ones (each fits one 10-minute device command)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [[ -d .whl && "${SMOKE:-0}" != 1 ]]; then  # the smoke run uses this machine's environment
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [[ "${SMOKE:-0}" == 1 ]]; then
  DEV=cpu; BACKBONE=resnet18; SIZE=64; BATCH=16; WORKERS=2; SLIDE=3072; STOCK=20; PREC=32; MODES="fp32 cl-fp32 train-fp32"
  LOADER_WORKERS="0 2"; TRAIN_WORKERS=2; TRAIN_SLIDE=2048; TRAIN_STEPS=3
else
  DEV=cuda; BACKBONE=wide_resnet50_2; SIZE=256; BATCH=128; WORKERS=15; SLIDE=${SLIDE:-50000}; STOCK=300; PREC=bf16
  MODES="fp32 bf16 cl-bf16 train-fp32 train-bf16"; LOADER_WORKERS="4 8 15"
  TRAIN_WORKERS=8; TRAIN_SLIDE=8192; TRAIN_STEPS=60
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
$PY -c "import torch, anomalib, openslide; print('torch', torch.__version__, 'anomalib', anomalib.__version__, 'cuda', torch.cuda.is_available())"

PART=${PART:-all}
if [[ $PART != 2 ]]; then
echo "== bare model: $BACKBONE $SIZE px, batch $BATCH"
$PY benchmarks/bench_model.py --device $DEV --backbone $BACKBONE --size $SIZE --batch-size $BATCH \
  --modes $MODES --json "$OUT/model.json" 2>&1 | grep -v Warning
echo "== end to end: WSIEngine.predict on a ${SLIDE} px synthetic slide vs bare model vs stock PNG path"
$PY benchmarks/bench_predict.py --device $DEV --backbone $BACKBONE --tile-size $SIZE --mpp 0.5 --slide-size $SLIDE \
  --precision $PREC --channels-last --batch-size $BATCH --num-workers $WORKERS --warmup-size 8192 \
  --stock-tiles $STOCK --skip-memory --workdir /tmp/bench_predict --json "$OUT/predict.json" 2>&1 \
  | grep -v -i "warning\|tip:"
echo "== tile loader alone: direct TIFF decoding vs openslide only (ring of slots, main-thread CPU per batch)"
$PY benchmarks/bench_tile_loader.py --slide /tmp/bench_predict/synth_${SLIDE}.tif --tile-size $SIZE --batch-size $BATCH \
  --workers $LOADER_WORKERS --device $DEV --json "$OUT/loader.json" 2>&1 | grep -v -i warning
ANOMALIB_WSI_DIRECT_TIFF=0 $PY benchmarks/bench_tile_loader.py --slide /tmp/bench_predict/synth_${SLIDE}.tif \
  --tile-size $SIZE --batch-size $BATCH --workers $WORKERS --device $DEV --json "$OUT/loader_openslide.json" 2>&1 \
  | grep -v -i warning
echo "== training through WSIDataModule vs the same steps on batches in memory (batch 32, as rd_focal_wsi.yaml)"
$PY benchmarks/bench_datamodule.py --device $DEV --backbone $BACKBONE --tile-size $SIZE --mpp 0.5 \
  --precision $PREC --channels-last --batch-size 32 --num-workers $TRAIN_WORKERS --slide-size $TRAIN_SLIDE \
  --steps $TRAIN_STEPS --json "$OUT/datamodule.json" 2>&1 | grep -v -i "warning\|tip:"
fi
if [[ $PART != 1 ]]; then
echo "== bare model, torch.compile (channels_last + bf16)"
$PY benchmarks/bench_model.py --device $DEV --backbone $BACKBONE --size $SIZE --batch-size $BATCH --compile \
  --modes $([[ $DEV == cuda ]] && echo cl-bf16 || echo cl-fp32) --json "$OUT/model_compiled.json" 2>&1 | grep -v Warning
echo "== end to end compiled: WSIEngine.predict --compile (last: it compiles for minutes)"
$PY benchmarks/bench_predict.py --device $DEV --backbone $BACKBONE --tile-size $SIZE --mpp 0.5 --slide-size $SLIDE \
  --precision $PREC --channels-last --compile --batch-size $BATCH --num-workers $WORKERS --warmup-size 8192 \
  --skip-stock --skip-memory --workdir /tmp/bench_predict --json "$OUT/predict_compiled.json" 2>&1 \
  | grep -v -i "warning\|tip:"
fi
echo "== done"

#!/usr/bin/env bash
# Every GPU measurement the project owes, in one run of under 8 minutes on one data-centre
# NVIDIA GPU (H100/H200), ending in ONE table: stage | setting | figure | target/ratio.
#
# Usage (from anywhere; the package installed, e.g. `pip install -e .`):
#   bash benchmarks/gpu_check.sh [--work DIR] [--report DIR] [--keep]
#     --work DIR     bulky files (DICOMs, caches, ~3 GiB on a GPU): default a temp folder,
#                    deleted at the end unless --keep; a given DIR is kept and reused
#     --report DIR   results.tsv, figures.json, table.md and one log per stage: default $OUT
#                    when that is set, else WORK/report
#   Environment: GPU_CHECK_N (DICOMs to decode; 2000 with a GPU, 200 without),
#   GPU_CHECK_BUDGET (seconds for all stages, default 460: a stage that would start later is
#   SKIPPED), GPU_CHECK_TEMPLATE (a JPEG Baseline DICOM whose real frame every file carries;
#   default ../shared/data/real-dicom/cxr_pa_monochrome2_jpeg.dcm beside the checkout, or
#   shared/... inside it; "none" or absent: phantoms), PYTHON (default python).
#
# Stages, each under its own `timeout` (a hang costs that stage, not the run; a stage that
# fails or times out prints FAILED with the reason and the rest go on):
#   env          nvidia-smi, python/torch/torchvision/CUDA/cuDNN versions, the GPU
#   data         GPU_CHECK_N RSNA-shaped 1024x1024 JPEG Baseline DICOMs (one shard per core)
#   decode       `python -m pneumolib preprocess --decoder opencv` (all cores) against
#                `--decoder cuda` (nvJPEG), each a fresh process as a user runs it; the cuda
#                path also in-process after a CUDA warm-up; pixel agreement of the two caches
#   probe        what tune.auto_max_micro_batch picks for resnet18 and resnet50 at 224 px,
#                and one training step at that size (does it fit)
#   train step   benchmarks/train_step.py: ResNet18 and ResNet50, 224 px, batch 256, AMP
#                (bf16 where supported), channels-last, GPU warp; end to end against the model
#                alone on ready tensors (efficiency, target >= 0.95) and peak GPU memory
#                (torch.cuda.max_memory_allocated); compile off first, compile on last (slow)
#   epoch        the decode stage's 256 px cache tiled to 24,000 train + 2,684 val rows
#                (the course split's sizes) in the exact cache format; train.fit for 2 epochs,
#                ResNet18, 224 px, batch 256, max_steps_per_epoch=0 (the whole split): fit's
#                seconds per epoch (train loop + val pass; target < 6 s) and the train loop
#                alone; epoch 1 includes fit's set-up and worker start, epoch 2 is warm
#   detect step  benchmarks/detect_step.py: the box detector (FCOS, ResNet18-FPN), 512 px,
#                batch 16, AMP: training images/s against the classifier's on the same images
# Without a CUDA GPU it prints "no CUDA GPU found: GPU stages skipped", runs the CPU side
# (data, the opencv decode on GPU_CHECK_N=200 files, tiny train-step and fit sanity runs that
# are no measurement, about 35 CPU-seconds in all) and exits 0. The decode stage also takes
# `--decoder cpu` (torchvision's CPU decode through the cuda path's batched code):
# `python benchmarks/gpu_check.py decode --help`. Exit status: 1 if any stage FAILED or was
# SKIPPED for want of time (a missing figure), else 0.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-python}
WORK="" REPORT="${OUT:-}" KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --work) WORK=$2; KEEP=1; shift 2 ;;
        --report) REPORT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$WORK" ]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/pneumolib_gpu_check.XXXXXX")
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
REPORT=${REPORT:-$WORK/report}
mkdir -p "$REPORT/logs"
REPORT=$(cd "$REPORT" && pwd)
: > "$REPORT/results.tsv"
rm -f "$REPORT/figures.json"
cleanup() { [ "$KEEP" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

# plain logs: progress bars off, or (where a caller asks for one) redrawn once a minute
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TQDM_MININTERVAL=60
BUDGET=${GPU_CHECK_BUDGET:-460}
T0=$SECONDS
STATUS=0  # 1 once a stage fails or is skipped for want of time
HELPER=("$PY" "$HERE/gpu_check.py")  # an array, not a function: `timeout` runs it
row() { "${HELPER[@]}" row --report "$REPORT" "$@" > /dev/null; }

# stage NAME CAP_S STAGE SETTING CMD...: run CMD under `timeout` (at most CAP_S, and never
# past the budget), its output shown and kept in REPORT/logs/NAME.log; on failure a FAILED
# row with the reason, unless CMD wrote its own.
stage() {
    local name=$1 cap=$2 label=$3 setting=$4
    shift 4
    local left=$((BUDGET - (SECONDS - T0)))
    if [ "$left" -lt 20 ]; then
        row "$label" "$setting" "SKIPPED: time budget ($BUDGET s) spent" "–"
        echo "=== $name: SKIPPED (time budget spent)"
        STATUS=1
        return
    fi
    local limit=$((cap < left ? cap : left)) before after rc t=$SECONDS
    before=$(wc -l < "$REPORT/results.tsv")
    echo "=== [$(date +%T)] $name (timeout ${limit} s)"
    timeout -k 10 "$limit" "$@" < /dev/null 2>&1 | tee "$REPORT/logs/$name.log"
    rc=${PIPESTATUS[0]}
    after=$(wc -l < "$REPORT/results.tsv")
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        row "$label" "$setting" "FAILED: timed out after $limit s" "–"
    elif [ "$rc" != 0 ] && [ "$after" = "$before" ]; then
        row "$label" "$setting" "FAILED: exit $rc: $(grep -v '^\s*$' "$REPORT/logs/$name.log" | tail -n 1 | cut -c1-300)" "–"
    fi
    if [ "$rc" != 0 ]; then
        echo "=== $name: FAILED (exit $rc), see $REPORT/logs/$name.log"
        STATUS=1
    fi
    echo "=== $name: $((SECONDS - t)) s"
}

echo "=== gpu_check $(date -u +%FT%TZ) on $(hostname); repo $ROOT (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "work $WORK; report $REPORT; budget $BUDGET s; load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
if command -v nvidia-smi > /dev/null; then
    timeout 30 nvidia-smi || echo "nvidia-smi: FAILED (exit $?)"
else
    echo "nvidia-smi: not found"
fi
timeout 180 "${HELPER[@]}" env < /dev/null
rc=$?
if [ "$rc" = 0 ]; then
    GPU=1
    N=${GPU_CHECK_N:-2000}
else
    GPU=0
    N=${GPU_CHECK_N:-200}
    if [ "$rc" != 3 ]; then
        echo "env: FAILED (exit $rc): torch not importable, or CUDA init failed or hung"
        row env "import torch, CUDA init" "FAILED: exit $rc (see above)" "–"
        STATUS=1
    fi
    echo "no CUDA GPU found: GPU stages skipped"
fi

TEMPLATE=${GPU_CHECK_TEMPLATE:-}
if [ -z "$TEMPLATE" ]; then
    for t in "$ROOT/../shared/data/real-dicom/cxr_pa_monochrome2_jpeg.dcm" \
             "$ROOT/shared/data/real-dicom/cxr_pa_monochrome2_jpeg.dcm"; do
        [ -f "$t" ] && TEMPLATE=$t && break
    done
fi
[ "$TEMPLATE" = none ] && TEMPLATE=""
[ -n "$TEMPLATE" ] && [ ! -f "$TEMPLATE" ] && echo "template $TEMPLATE not found: phantoms" && TEMPLATE=""
TEMPLATE_ARGS=()
[ -n "$TEMPLATE" ] && TEMPLATE_ARGS=(--template "$TEMPLATE")

RAW=$WORK/raw_$N CACHE_CPU=$WORK/cache_opencv CACHE_GPU=$WORK/cache_cuda EPOCH_CACHE=$WORK/cache_epoch
stage data 150 data "$N DICOMs, 1024 px" "${HELPER[@]}" data --raw "$RAW" --n "$N" ${TEMPLATE_ARGS[@]+"${TEMPLATE_ARGS[@]}"}
stage decode_opencv 90 decode "opencv, $N DICOMs" \
    "${HELPER[@]}" decode --report "$REPORT" --raw "$RAW" --cache "$CACHE_CPU" --decoder opencv
if [ "$GPU" = 1 ]; then
    stage decode_cuda 120 decode "cuda (nvJPEG), $N DICOMs" "${HELPER[@]}" decode --report "$REPORT" \
        --raw "$RAW" --cache "$CACHE_GPU" --decoder cuda --against "$CACHE_CPU"
    stage probe 90 "micro-batch probe" "resnet18, resnet50 at 224 px" \
        "${HELPER[@]}" probe --report "$REPORT" --models resnet18,resnet50 --size 224
    for model in resnet18 resnet50; do
        stage "train_step_${model}" 120 "train step" "$model 224 px, batch 256, compile off" \
            "${HELPER[@]}" train-step --report "$REPORT" --cache "$CACHE_CPU" --model "$model" \
            --device cuda --size 224 --batch 256 --steps 30
    done
    stage detect_step 120 "detect step" "FCOS resnet18-FPN 512 px, batch 16, AMP" \
        "${HELPER[@]}" detect-step --report "$REPORT" --device cuda --size 512 --batch 16
    stage epoch_cache 90 epoch "tiling the cache to 24,000 + 2,684 rows" \
        "${HELPER[@]}" epoch-cache --base "$CACHE_CPU" --out "$EPOCH_CACHE" --train 24000 --val 2684
    stage epoch 150 epoch "resnet18 224 px, batch 256, 2 epochs" "${HELPER[@]}" epoch \
        --report "$REPORT" --cache "$EPOCH_CACHE" --run "$WORK/run_epoch" --device cuda \
        --image-size 224 --batch 256 --epochs 2
    for model in resnet18 resnet50; do
        stage "train_step_${model}_compile" 180 "train step" "$model 224 px, batch 256, compile on" \
            "${HELPER[@]}" train-step --report "$REPORT" --cache "$CACHE_CPU" --model "$model" \
            --device cuda --size 224 --batch 256 --steps 30 --compile
    done
else
    # The GPU rows, so the table shows what a GPU run measures; then the CPU-side sanity runs.
    row decode "cuda (nvJPEG), $N DICOMs" "skipped" "needs a CUDA GPU"
    row "micro-batch probe" "resnet18, resnet50 at 224 px" "skipped" "needs a CUDA GPU"
    for model in resnet18 resnet50; do
        for c in off on; do
            row "train step" "$model 224 px, batch 256, compile $c" "skipped" "needs a CUDA GPU"
        done
    done
    row epoch "resnet18 224 px, batch 256, 24,000 train images" "skipped" "needs a CUDA GPU"
    # One thread each: on a CPU that other jobs load, two OpenMP threads spend these tiny runs
    # waiting at barriers for a descheduled peer (seen: 5x slower).
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    stage train_step_cpu 240 "train step" "resnet18 64 px, CPU sanity" \
        "${HELPER[@]}" train-step --report "$REPORT" --cache "$CACHE_CPU" --model resnet18 \
        --device cpu --size 64 --batch 8 --steps 2 --warmup 1 --workers 1
    stage detect_step_cpu 120 "detect step" "FCOS resnet18-FPN 64 px, CPU sanity" \
        "${HELPER[@]}" detect-step --report "$REPORT" --device cpu --size 64 --batch 4 --steps 2
    stage epoch_cache 120 epoch "tiling the cache to 64 + 32 rows" \
        "${HELPER[@]}" epoch-cache --base "$CACHE_CPU" --out "$EPOCH_CACHE" --train 64 --val 32
    stage epoch 240 epoch "resnet18 32 px, batch 32, CPU sanity" "${HELPER[@]}" epoch \
        --report "$REPORT" --cache "$EPOCH_CACHE" --run "$WORK/run_epoch" --device cpu \
        --image-size 32 --batch 32 --epochs 1 --workers 0
fi

echo
echo "=== gpu_check: results ($((SECONDS - T0)) s in all; logs in $REPORT/logs)"
[ "$GPU" = 1 ] || echo "no CUDA GPU found: GPU stages skipped"
if ! "${HELPER[@]}" table --report "$REPORT"; then
    echo "table: FAILED; the raw rows:"
    cat "$REPORT/results.tsv"
    STATUS=1
fi
exit $STATUS

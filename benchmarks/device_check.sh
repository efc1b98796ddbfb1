#!/usr/bin/env bash
# One GPU session's checks, prepared to run in one go on a lent device (issue 18's protocol):
#
#     bash benchmarks/device_check.sh            # everything it writes goes under $OUT
#
# About 9 minutes on an H200 (each step has its own time limit, so a slow step cannot eat the
# rest). Afterwards, on the development machine, fold the JSON into the page:
#
#     python benchmarks/fold_runs.py --device-run OUT/run_tf32.json \
#         --mode "float32, TF32 on (cuBLAS and cuDNN)=OUT/run_tf32.json" \
#         --mode "float32, default flags (cuBLAS TF32 off, cuDNN TF32 on)=OUT/run_default.json" \
#         --mode "float16=OUT/run_fp16.json" --compiled OUT/compile_resnet18.json ...
#
# Nothing here stops at a failure: every step's output is kept, and its exit code printed.
set -u
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
step() {  # step SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    echo "=== $name ($(date +%T), limit ${limit}s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "--- $name: exit $?"
    tail -n 25 "$OUT/$name.log"
}
RUN="python benchmarks/run.py --devices cuda --strategies unfold,auto --repeats 20 --layer-repeats 0 --kind-models '' --no-docs"

pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || tail "$OUT/install.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
env | grep -i -E "tf32" || echo "no TF32 environment override"

step 150 tests python -m pytest -q -x -p no:cacheprovider -k "cuda or fast_path" tests
step 60 verify_all lowerconv verify resnet18 --device all
step 90 verify_grad lowerconv verify resnet18 --device cuda --gradients --strategy auto --no-timing
step 60 fastpath python benchmarks/cuda_fastpath.py --batches 1
step 120 run_tf32 bash -c "$RUN --batches 1,32 --tf32 on --training-models '' --json $OUT/run_tf32.json"
step 60 run_default bash -c "$RUN --batches 1 --training-models '' --json $OUT/run_default.json"
step 60 run_fp16 bash -c "$RUN --batches 32 --dtype float16 --training-models '' --json $OUT/run_fp16.json"
step 90 training bash -c "$RUN --models resnet18 --batches 1 --training-batch 32 --training-strategies auto,unfold --json $OUT/run_training.json"
for model in resnet18 mobilenet_v2 efficientnet_b0; do
    step 90 "compile_$model" bash -c "$RUN --models $model --batches 1 --training-models '' --compile-models $model --compile-strategy auto --compile-batch 32 --json $OUT/compile_$model.json"
done
echo "=== done $(date +%T); logs and JSON in $OUT"

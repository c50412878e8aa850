#!/usr/bin/env bash
# One run on a GPU machine that measures what the project claims, in under ten minutes,
# with every figure and log in one folder.
#
#   bash benchmarks/gpu_check.sh --cats DIR [--out DIR] [--iters N]
#   bash benchmarks/gpu_check.sh --dry-run [--out DIR]
#   make gpu-check CATS=DIR [OUT=DIR]
#
#   --cats DIR   the cat faces (Kaggle: spandan2/cats-faces-64x64-for-generative-models,
#                e.g. /kaggle/input/cats-faces-64x64-for-generative-models)
#   --out DIR    where everything goes (default outputs/gpu_check; emptied first)
#   --iters N    iterations of the course preset on the cats (default 1000)
#   --dry-run    every step at toy size on the CPU, on fake cats it writes itself (CI)
#
# Steps, each logged to OUT/<step>.log with its exit code in OUT/steps.tsv; a failing
# step does not stop the next, and the script exits 1 if any failed:
#   install     pip install -e ".[dev]" when lib or pytest cannot be imported
#   env         the GPU, torch, what precision="auto" picks (env.json, nvidia-smi.txt)
#   tests       tests/test_gpu.py and test_distributed's 2-GPU SyncBatchNorm test (tests.xml)
#   throughput  benchmarks/throughput.py: the reference loop against the project's step,
#               every speed option on/off, torch.compile and CUDA graphs (throughput.json)
#   cats        configs/dcgan_train.json on the cats for N iterations (cats_run/)
#   summary     benchmarks/gpu_summary.py: summary.md, summary.json, throughput.png
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
OUT="outputs/gpu_check"
CATS=""
ITERS=1000
DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --cats) CATS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --iters) ITERS="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$DRY_RUN" = 0 ] && [ ! -d "$CATS" ]; then
    echo "gpu_check.sh: --cats DIR is required: the folder of cat-face JPEGs (Kaggle" \
         "dataset spandan2/cats-faces-64x64-for-generative-models); got '${CATS}'" >&2
    exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# this checkout's lib first, whatever else is installed
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 PY OUT REPO
if [ "$DRY_RUN" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # the CPU, even on a GPU machine
fi

FAILED=0
run_step() {  # NAME TIME_LIMIT_S COMMAND...: output to OUT/NAME.log, status to steps.tsv
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS rc
    echo "== $name (at most ${limit} s): $*"
    if declare -F "$1" >/dev/null; then  # a function of this script: timeout runs programs
        export -f "$1"
        set -- bash -c "$1"
    fi
    timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$OUT/steps.tsv"
    if [ "$rc" -eq 0 ]; then
        echo "   ok in $((SECONDS - start)) s"
    else
        FAILED=1
        [ "$rc" -eq 124 ] && echo "   TIMED OUT after ${limit} s" || echo "   FAILED (exit $rc)"
        tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
    fi
}

install() {  # looks the modules up without importing them (seconds, not a minute)
    if "$PY" - <<'EOF'
import importlib.util, sys
needed = ("lib", "torch", "torchvision", "torchmetrics", "torch_fidelity", "scipy", "sklearn",
          "papermill", "matplotlib", "PIL", "tqdm", "wandb", "pytest")
missing = [name for name in needed if importlib.util.find_spec(name) is None]
print("missing:", " ".join(missing) if missing else "nothing")
sys.exit(1 if missing else 0)
EOF
    then
        echo "nothing to install"
    else
        "$PY" -m pip install -e ".[dev]"
    fi
}

environment() {
    command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    "$PY" - "$OUT/env.json" <<'EOF'
import json, sys
import torch
from lib.core.device import pick_amp_dtype, pick_device
device = pick_device("auto")
env = {"torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
       "device": str(device), "cpu_threads": torch.get_num_threads(),
       "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
       "capability": ".".join(map(str, torch.cuda.get_device_capability(device)))
                     if device.type == "cuda" else None,
       "gpus": torch.cuda.device_count(),
       "arch_list": torch.cuda.get_arch_list() if device.type == "cuda" else [],
       "auto_precision": str(pick_amp_dtype("auto", device) or "fp32")}
print(json.dumps(env, indent=2))
open(sys.argv[1], "w").write(json.dumps(env, indent=2) + "\n")
EOF
}

fake_cats() {  # DIR: 48 toy "cats" (random shapes) as JPEGs, like the Kaggle folder
    "$PY" - "$1" <<'EOF'
import sys
from pathlib import Path
from PIL import Image
from lib.data import make_shapes
folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
for i, img in enumerate(make_shapes(64, n=48, seed=3).images.permute(0, 2, 3, 1).numpy()):
    Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
EOF
}

if [ "$DRY_RUN" = 1 ]; then
    TP_ARGS=(--size 16 --batch 8 --images 32 --iters 1 --rounds 1 --warmup 1
             --options --compile --layers --compile-backend eager --family-batch 2)
    CATS="$OUT/fake_cats"
    ITERS=4
    CATS_ARGS=(--set data.image_size=16 --set trainer.batch_size=8 --set "data.root=$OUT/data")
    LIMITS=(300 60 120 300 180)
else
    TP_ARGS=(--options --compile --layers)
    CATS_ARGS=()
    LIMITS=(90 20 200 160 110)  # seconds: 10 min in all, with the summary's 20
fi
LOG_EVERY=$(( ITERS / 4 > 0 ? ITERS / 4 : 1 ))
# a slow GPU stops the cats run in time (saved, summarised) rather than at the step's limit
CATS_MINUTES=$(awk "BEGIN { print (${LIMITS[4]} - 20) / 60 }")

run_step install "${LIMITS[0]}" install
run_step env "${LIMITS[1]}" environment
run_step tests "${LIMITS[2]}" "$PY" -m pytest -q -p no:cacheprovider \
    --junitxml="$OUT/tests.xml" tests/test_gpu.py \
    tests/test_distributed.py::test_synced_batchnorm_step_equals_one_step_on_the_whole_batch
run_step throughput "${LIMITS[3]}" "$PY" benchmarks/throughput.py "${TP_ARGS[@]}" \
    --json "$OUT/throughput.json"
if [ "$DRY_RUN" = 1 ]; then
    fake_cats "$CATS"
fi
run_step cats "${LIMITS[4]}" "$PY" -m lib train configs/dcgan_train.json --out "$OUT" \
    --set name=cats_run --set "data.path=$CATS" --set trainer.epochs=1 \
    --set "trainer.iterations_per_epoch=$ITERS" --set "trainer.log_every_step=$LOG_EVERY" \
    --set trainer.save_period=1 --set trainer.eval_samples=0 --set wandb.mode=disabled \
    --set "trainer.max_minutes=$CATS_MINUTES" "${CATS_ARGS[@]}"
run_step summary 20 "$PY" benchmarks/gpu_summary.py "$OUT"
cat "$OUT/summary.md" 2>/dev/null
echo "everything is in $OUT"
exit "$FAILED"

#!/usr/bin/env bash
# The accelerator check: one command on a fresh GPU machine with this checkout.
#
#   bash experiments/gpu_check.sh                 # prints everything; about 5-8 minutes
#   OUT=/tmp/gpu BUDGET_S=480 bash experiments/gpu_check.sh
#
# It installs what it needs, then measures with experiments/benchmark.py:
#   1. BYOL ResNet-18, CIFAR stem, 32 px, bf16, batch 512: the train step's images/s.
#   2. BYOL ResNet-50, 224 px, bf16, batch 256: images/s, model FLOPs, MFU against
#      the device's dense bf16 peak, peak device memory, and a one-step profile
#      (the step's device time by XLA operation kind).
#   3. The same ResNet-50 step in float32 (TF32 matmuls): what bf16 buys.
#   4. The end-to-end rate (tf.data on this machine's cores -> device -> step)
#      on a synthetic JPEG folder of ImageNet-sized images, where TensorFlow is
#      installed. Images are source images; each gives BYOL's two 224 px views.
# Targets (issue 16): >= 2,500 img/s per H100 for R50 bf16, >= 15,000 for R18/32.
#
# Installing: where JAX already sees a GPU and sslx's device-side dependencies
# import, nothing is installed (an accelerator image keeps its own JAX).
# Otherwise `pip install -e .[gpu]`; on a machine with no package index,
# wheels placed in ./.whl (ml_collections, dm-pix) are installed offline.
# Every measurement runs in its own process under a time limit, so one that
# fails or runs long costs only itself; the whole check stops by BUDGET_S.
# INSTALL=no skips installing; EXTRA="--config.x=y ..." is appended to every
# measurement (a CPU smoke test: EXTRA="--config.batch_size=2 --config.data.image_size=32").
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sslx_gpu_check}
BUDGET_S=${BUDGET_S:-480}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
JSONL="$OUT/gpu_check.jsonl"
: > "$JSONL"
START=$(date +%s)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4
echo "host cores: $(nproc)"

echo "== install"
ready() {
  "$PY" - <<'EOF' 2>/dev/null
import jax, flax, optax, orbax.checkpoint, chex, ml_collections, dm_pix  # noqa
assert jax.devices()[0].platform == "gpu", jax.devices()
EOF
}
if [[ ${INSTALL:-auto} == no ]]; then
  echo "INSTALL=no: using $PY as it is"
elif ready; then
  echo "JAX sees a GPU and every step dependency imports: nothing installed"
elif ls .whl/*.whl >/dev/null 2>&1 && "$PY" -c "import jax; assert jax.devices()[0].platform == 'gpu'" 2>/dev/null; then
  # An accelerator image with its own JAX and no package index: add the rest.
  echo "JAX sees a GPU: installing ./.whl offline beside it"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/sslx_site .whl/*.whl
  export PYTHONPATH="/tmp/sslx_site${PYTHONPATH:+:$PYTHONPATH}"
else
  "$PY" -m pip install -q --retries 1 --timeout 20 -e ".[gpu]" && echo "installed: pip install -e .[gpu]"
fi
"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" || { echo "JAX is not usable here"; exit 1; }
HAVE_TF=0
"$PY" -c "import tensorflow, tensorflow_datasets" 2>/dev/null && HAVE_TF=1

measure() {  # measure NAME LIMIT_S ARGS...: one benchmark process, its JSON lines kept
  local name=$1 limit=$2; shift 2
  local budget; budget=$(left)
  if (( budget < 30 )); then echo "== $name: skipped, ${budget}s of the budget left"; return; fi
  (( limit > budget )) && limit=$budget
  echo "== $name (limit ${limit}s)"
  # shellcheck disable=SC2086
  timeout "$limit" "$PY" experiments/benchmark.py --out="$JSONL" "$@" ${EXTRA:-} 2>&1 \
    | grep -v -E "^[IW][0-9]{4} |^\s*$|xla_bridge|libtpu" | tee "$OUT/$name.log" | tail -25
  local rc=${PIPESTATUS[0]}
  (( rc != 0 )) && echo "!! $name exited $rc (124: its time limit)"
}

measure r18_32px_bf16 150 --config=configs/byol.py:cifar10 --config.batch_size=512 \
  --config.dtype=bfloat16 --what=step --seconds=10 --warmup=5
measure r50_224px_bf16 240 --config=configs/byol.py:imagenet --config.batch_size=256 \
  --config.dtype=bfloat16 --what=step --seconds=10 --warmup=5 --profile="$OUT/trace_r50"
measure r50_224px_fp32 150 --config=configs/byol.py:imagenet --config.batch_size=256 \
  --config.dtype=float32 --what=step --seconds=8 --warmup=3
if (( HAVE_TF )); then
  "$PY" experiments/jpeg_folder.py make --dir=/tmp/sslx_jpegs --images=3000
  measure end_to_end_jpeg 150 --config=configs/byol.py:imagenet --config.batch_size=256 \
    --config.dtype=bfloat16 --config.data.dataset=folder:/tmp/sslx_jpegs \
    --what=step,input,end_to_end --seconds=10 --warmup=3
else
  echo "== end_to_end: not measured: TensorFlow (tf.data) is not installed here and could not be"
  echo "   installed; the host pipeline's cost per image is measured on CPU by"
  echo "   experiments/jpeg_folder.py (experiments/RESULTS.md)."
fi

echo "== summary ($(( $(date +%s) - START )) s)"
"$PY" - "$JSONL" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cols = ["what", "model", "image_size", "batch_size", "dtype", "device", "images_per_sec",
        "step_ms", "gflops_per_image", "mfu", "device_peak_bytes", "compile_s", "bottleneck"]
print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
for r in rows:
  if "device_peak_bytes" in r:
    r["device_peak_bytes"] = f"{r['device_peak_bytes'] / 2**30:.1f} GiB"
  print("| " + " | ".join("" if r.get(c) is None else str(r[c]) for c in cols) + " |")
EOF

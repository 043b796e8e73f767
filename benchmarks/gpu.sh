#!/usr/bin/env bash
# The harness's throughput on a GPU machine under JAX (issue 17, item 8).
#
# For a machine with Python 3.12, JAX (CUDA), PyTorch, NumPy and SciPy but
# no TensorFlow and no Keras. Run from the repository root:
#
#     bash benchmarks/gpu.sh
#
# It installs the carried wheels into /tmp/site, checks that every module
# the run needs imports (one line per missing one, then exit 1), then:
#   1. benchmarks/harness.py: model-only against the harness for resnet18 at
#      32 px, batch 128, the full synthetic size, float32 then
#      mixed_bfloat16 (--input memory, JAX's default: no TensorFlow);
#   2. `train.py sweep --dataset synthetic --gamma 0.1 --seeds 1 --epochs 3`:
#      the proposal and BASE, 2 runs, timed as a whole (training images of
#      all runs / wall seconds of the command: start-up, compilation,
#      validation, checkpoints and test evaluation included), its output
#      in $OUT_DIR/sweep.log;
#   3. benchmarks/sweep.py: a sweep in one process, 2 configurations (c =
#      0.1 and BASE) x 2 seeds x $SWEEP_EPOCHS epochs of $MODEL on CIFAR-sized
#      synthetic data, twice on one new JAX compilation cache folder (cold,
#      then warm): its training share, per-run overhead and the compile
#      seconds of each of its 2 programs (issue 27);
# and prints one table.
#
# Wheels the caller carries into .whl/ (cp312, manylinux x86_64): Keras
# and what it needs, then the harness's own needs (it splits with
# scikit-learn, imports statsmodels for its statistics, and the sweep's
# report draws its plot with matplotlib):
#   keras namex optree absl-py rich markdown-it-py mdurl pygments h5py
#   ml-dtypes packaging
#   scikit-learn joblib cloudpickle threadpoolctl narwhals
#   statsmodels pandas python-dateutil six tzdata
#   matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing
# (JAX and PyTorch bring typing-extensions, and JAX ml-dtypes, already.)
# Made on any machine with pip, then copied into .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux_2_28_x86_64 -d /tmp/whl \
#     keras namex optree absl-py rich markdown-it-py mdurl pygments h5py \
#     ml-dtypes packaging scikit-learn joblib cloudpickle threadpoolctl \
#     narwhals statsmodels pandas python-dateutil six tzdata matplotlib \
#     contourpy cycler fonttools kiwisolver pillow pyparsing
#
# Environment (defaults are the GPU measurement; small values test it on a
# CPU): MODEL (resnet18), BATCH (128), SIZE (50000: synthetic training
# images before the 10 % validation split), EPOCHS (3, the first untimed),
# ROUNDS (2), SWEEP_EPOCHS (3), PRECISIONS ("float32 mixed_bfloat16"),
# OUT_DIR (a new temporary directory), SKIP_WHEELS=1 (use the packages
# already installed; PYTHONPATH is kept and the repository added).

if [ -z "${SKIP_WHEELS:-}" ]; then
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
    export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
fi

set -uo pipefail
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
MODEL=${MODEL:-resnet18}
BATCH=${BATCH:-128}
SIZE=${SIZE:-50000}
EPOCHS=${EPOCHS:-3}
ROUNDS=${ROUNDS:-2}
SWEEP_EPOCHS=${SWEEP_EPOCHS:-3}
PRECISIONS=${PRECISIONS:-float32 mixed_bfloat16}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/gpu-bench-XXXXXX)}
mkdir -p "$OUT_DIR" || exit 1

# -- the modules the run imports, checked before anything runs ----------
python3 - <<'EOF' || exit 1
import importlib
import sys

# module -> the wheel that provides it (its own dependencies show up in
# the error message: "No module named ...").
NEEDED = {
    "numpy": "numpy",
    "scipy.stats": "scipy",
    "jax": "jax",
    "absl": "absl-py",
    "rich": "rich",
    "h5py": "h5py",
    "ml_dtypes": "ml-dtypes",
    "packaging": "packaging",
    "namex": "namex",
    "optree": "optree",
    "keras": "keras",
    "sklearn.model_selection": "scikit-learn",
    "pandas": "pandas",
    "statsmodels.stats.multitest": "statsmodels",
    "matplotlib.backends.backend_agg": "matplotlib",
    "keras_bninit.harness.experiment": "this repository",
    "keras_bninit.harness.memory": "this repository",
    "models": "this repository",
}
missing = 0
for module, wheel in NEEDED.items():
    try:
        importlib.import_module(module)
    except Exception as error:  # ImportError, or a broken wheel's error
        print(f"missing: {module} (from {wheel}): {error}")
        missing += 1
if "tensorflow" in sys.modules:
    print("note: TensorFlow was imported; the run does not need it")
if missing:
    sys.exit(1)
import jax

print(f"jax {jax.__version__} devices: {jax.devices()}")
EOF

# -- 1. model-only against the harness ----------------------------------
declare -a ROWS=()
failed=0
for precision in $PRECISIONS; do
    log="$OUT_DIR/harness-$precision.log"
    echo "== benchmarks/harness.py $MODEL batch $BATCH $precision"
    start=$SECONDS
    if python3 benchmarks/harness.py --backend jax --model "$MODEL" \
        --batch-size "$BATCH" --precision "$precision" --input memory \
        --epochs "$EPOCHS" --rounds "$ROUNDS" --synthetic-size "$SIZE" \
        2>&1 | tee "$log"; then
        model_only=$(awk '/^median model-only/ {print $3}' "$log")
        harness=$(awk '/^median harness  / {print $3}' "$log")
        ratio=$(awk '/^harness\/model-only:/ {print $2}' "$log")
    else
        model_only=failed harness=failed ratio=failed failed=1
    fi
    echo "($((SECONDS - start)) s)"
    ROWS+=("$MODEL 32px b$BATCH $precision|$model_only|$harness|$ratio")
done

# -- 2. a sweep, timed as a whole ---------------------------------------
echo "== train.py sweep: $MODEL, 2 runs (c = 0.1 and BASE) x $SWEEP_EPOCHS epochs"
start=$(date +%s.%N)
if python3 train.py sweep --dataset synthetic --gamma 0.1 --seeds 1 \
    --epochs "$SWEEP_EPOCHS" --backend jax --model "$MODEL" \
    --batch-size "$BATCH" --synthetic-size "$SIZE" --input memory \
    --out "$OUT_DIR/sweep" >"$OUT_DIR/sweep.log" 2>&1; then
    end=$(date +%s.%N)
    grep '^\[sweep\]' "$OUT_DIR/sweep.log"
    sweep=$(python3 - "$OUT_DIR/sweep" "$start" "$end" <<'EOF'
import glob
import json
import os
import sys

folder, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
runs, images = 0, 0
for path in glob.glob(os.path.join(folder, "**", "result.json"), recursive=True):
    with open(path) as f:
        record = json.load(f)
    runs += 1
    images += record["data"]["num_train"] * len(record["history"]["epoch_time_s"])
seconds = end - start
print(f"{runs} runs, {images} training images / {seconds:.1f} s wall = "
      f"{images / seconds:.1f} img/s")
EOF
    ) || { sweep=failed; failed=1; }
else
    tail -n 30 "$OUT_DIR/sweep.log"
    sweep=failed failed=1
fi

# -- 3. a sweep's share of training, cold and warm compilation cache ------
declare -a SHARES=()
export JAX_COMPILATION_CACHE_DIR="$OUT_DIR/jax-cache"
for cache in cold warm; do
    log="$OUT_DIR/sweep-share-$cache.log"
    echo "== benchmarks/sweep.py $MODEL, 2 configurations x 2 seeds ($cache cache)"
    if python3 benchmarks/sweep.py --backend jax --model "$MODEL" \
        --dataset synthetic --batch-size "$BATCH" --synthetic-size "$SIZE" \
        --seeds 1-2 --epochs "$SWEEP_EPOCHS" --input memory 2>&1 | tee "$log"; then
        SHARES+=("$cache cache: $(grep -E '^(wall|training|share|overhead|compile)' "$log" | tr '\n' ';')")
    else
        SHARES+=("$cache cache: failed") failed=1
    fi
done

# -- the table ----------------------------------------------------------
echo
printf '%-36s | %16s | %13s | %6s\n' configuration "model-only img/s" \
    "harness img/s" ratio
for row in "${ROWS[@]}"; do
    IFS='|' read -r name model_only harness ratio <<<"$row"
    printf '%-36s | %16s | %13s | %6s\n' "$name" "$model_only" "$harness" \
        "$ratio"
done
echo "sweep (jax, $MODEL, synthetic $SIZE, $SWEEP_EPOCHS epochs): $sweep"
for line in "${SHARES[@]}"; do
    echo "sweep share, $line"
done
echo "logs: $OUT_DIR"
exit $failed

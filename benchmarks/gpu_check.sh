#!/usr/bin/env bash
# The GPU check: the Distiller's STKD step inside fit, and a short real Fashion-MNIST distillation, on a machine
# with Keras's JAX backend and no TensorFlow (the device tool's H200: jax with CUDA, torch, numpy; no keras, no
# TensorFlow). About 5 minutes on one H200.
#
# Prepare on the development machine, in the repository root (both folders are ignored by git):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
#   mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/
# Then run it there (device tool: carry [".whl", ".data"]):  bash benchmarks/gpu_check.sh
# It prints, for resnet32x4 -> resnet8x4 (32x32x3, 100 classes) at batch 64 and 256, float32 and mixed_bfloat16,
# images/s of the four steps of benchmarks/step_speed.py inside fit and the ratios; then the Fashion-MNIST run.
# Targets (issue 11): STKD in fit >= 90% of 21,500 img/s (bf16, b64), 56,400 (bf16, b256), 16,000 (f32, b64);
# c / (a + b) <= 1.05; STKD no slower than keras.distillation. Then (issue 12) benchmarks/scale.py: the real
# training loop (numpy pipeline, run callbacks) against the bare step on JAX; target loop / bare >= 0.90.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# The repository itself is the package (not installed); the wheels (if any) beside it.
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
DATA_DIR="${STKD_FASHION_MNIST_DIR:-.data/fashion-mnist}"
[ -f "$DATA_DIR/t10k-labels-idx1-ubyte.gz" ] || DATA_DIR=/usr/share/datasets/fashion-mnist
# Smaller settings for a dry run on a CPU (e.g. STKD_GPU_CHECK_TEACHER=resnet8 STKD_GPU_CHECK_STUDENT=cnn8
# STKD_GPU_CHECK_BATCHES=16 STKD_GPU_CHECK_STEPS=2 STKD_GPU_CHECK_EPOCHS=2 STKD_GPU_CHECK_TRAIN_SUBSET=512).
TEACHER="${STKD_GPU_CHECK_TEACHER:-resnet32x4}"
STUDENT="${STKD_GPU_CHECK_STUDENT:-resnet8x4}"
BATCHES="${STKD_GPU_CHECK_BATCHES:-64,256}"
STEPS="${STKD_GPU_CHECK_STEPS:-50}"
EPOCHS="${STKD_GPU_CHECK_EPOCHS:-5}"
SUBSET="${STKD_GPU_CHECK_TRAIN_SUBSET:-60000}"

python3 - <<'PY'
import sys
sys.modules["tensorflow"] = None  # the check runs as it would where TensorFlow is absent
import jax, keras, stkd_keras.distiller  # noqa: F401
print(f"keras {keras.__version__} ({keras.backend.backend()}), jax {jax.__version__}, devices: {jax.devices()}")
PY

echo "== STKD step inside fit: $TEACHER -> $STUDENT"
python3 benchmarks/step_speed.py --backend jax --teacher "$TEACHER" --student "$STUDENT" --batch-size "$BATCHES" \
  --policy float32,mixed_bfloat16 --warmup 5 --steps "$STEPS" --rounds 3

echo "== The real training loop against the bare step (benchmarks/scale.py; numpy pipeline, no TensorFlow)"
python3 benchmarks/scale.py --backend jax --teacher "$TEACHER" --student "$STUDENT" --batch-size 256 --warmup 5 --steps "$STEPS" --jit-compile \
  --data-dir "$DATA_DIR"

echo "== Fashion-MNIST through the Python API (numpy IDX reader, no TensorFlow)"
python3 benchmarks/fashion_mnist_api.py --data-dir "$DATA_DIR" --epochs "$EPOCHS" --train-subset "$SUBSET" --batch-size 128 \
  --policy mixed_bfloat16

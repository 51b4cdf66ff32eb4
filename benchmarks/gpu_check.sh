#!/usr/bin/env bash
# The GPU check (issue 7): under 8 minutes on one H100.
#
# Here, once:   bash benchmarks/fetch_gpu_wheels.sh
# On the GPU:   bash benchmarks/gpu_check.sh      (results under $OUT)
#
# 1. installs what the machine lacks from the carried wheels (.whl/);
# 2. runs the GPU tests (flash_attn vs sdpa vs math in bf16, encoder
#    forward/backward) and the CPU-side attention/encoder tests;
# 3. measures, for the paper configuration (hparams/s3l.yaml: 23 M encoder,
#    bf16, 1080 s micro-batches = 72 x 15 s), step time, peak memory and
#    audio seconds per second for the flash_attn, sdpa and math backends
#    and for FFT vs cuDNN positional convolutions (conv_impl auto = direct
#    on CUDA until measured), and projects 12,500 steps x 4 micro-batches.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! $PY -c "import speechbrain, hyperpyyaml, soundfile" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        $PY -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
    else
        echo "missing packages and no .whl/: run fetch_gpu_wheels.sh here"
    fi
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import torch, speechbrain; print('torch', torch.__version__,
'speechbrain', speechbrain.__version__, torch.cuda.get_device_name())"
    $PY -c "import flash_attn; print('flash-attn', flash_attn.__version__)" \
        2>/dev/null || echo "flash-attn package absent: torch varlen kernel"
} 2>&1 | tee "$OUT/device.txt"

timeout 180 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    tests/test_attention.py tests/test_encoder.py 2>&1 | tail -15 \
    | tee "$OUT/gpu_tests.txt"

timeout 120 $PY benchmarks/attention.py --device cuda --repeats 5 2>&1 \
    | tee "$OUT/attention.txt"

timeout 240 $PY benchmarks/train_step.py --device cuda --model paper \
    --batch 72 --seconds 15 --precision bf16 --repeats 3 \
    --backends flash_attn sdpa math --conv-impls fft direct --project 2>&1 \
    | tee "$OUT/train_step.txt"

#!/usr/bin/env bash
# The GPU check, run once on a CUDA machine from the repository root:
#   bash bench/device_check.sh            (writes into $OUT, or ./device_out)
# It installs the package without dependencies into the machine's own PyTorch environment,
# runs the CUDA tests (device placement and dtypes of every combiner, the trainer in fp32 and
# bf16) and, when pytest-benchmark is there, the quick benchmark on the GPU.
set -uo pipefail
OUT="${OUT:-device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -3
# Packages the machine lacks (bitsandbytes, torchjd) travel as wheels in .whl/ when present.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/cuda_tests.txt" | tail -40
# 8-bit / 4-bit LoRA (skipped without bitsandbytes); peak memory and step time -> $OUT/quant.json
PARETOOPT_DEVICE_REPORT="$OUT" python3 -m pytest tests/test_cuda_quant.py -q -s -p no:cacheprovider -rs 2>&1 | tee "$OUT/cuda_quant_tests.txt" | tail -20
python3 -m pytest tests/test_hf_multi_objective.py -k cuda -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/hf_trainer_cuda.txt" | tail -10
# One policy update of a GPT-2-small-shaped model per combiner: time and memory vs linear.
python3 bench/gpu_step.py --out "$OUT" 2>&1 | tee "$OUT/gpu_step.txt" | tail -40
# The whole trainer at the GPT-2-small shape in bf16, n = 2 and 4, per combiner, by phase; and
# TRL's GRPOTrainer with and without the PAMA plug-in -> $OUT/gpu_trainer.json
timeout 900 python3 bench/gpu_trainer.py --out "$OUT" 2>&1 | tee "$OUT/gpu_trainer.txt" | tail -30
if [ "${DEVICE_BENCH:-1}" = 1 ] && python3 -c "import pytest_benchmark" 2>/dev/null; then
    timeout 300 python3 -m paretoopt.cli bench --quick --out "$OUT/bench" 2>&1 | tail -40
fi

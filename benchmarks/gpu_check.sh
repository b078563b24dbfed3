#!/usr/bin/env bash
# The GPU check, as one short script (about 5 minutes on one recent GPU; nothing is downloaded):
#   1. the tiny tests on CUDA: tests/test_gpu.py (bf16 autocast, fp16 + GradScaler, pinned memory, torch.compile,
#      resume) and the CPU suite's end-to-end files (tests/test_train.py, tests/test_resume.py), the accelerator
#      picking CUDA (TUNEFORGE_TEST_DEVICE=cuda fails them if CUDA is not visible);
#   2. throughput rows: minilm-l6 on an SST-2 slice (bf16, fp16, bf16 + torch.compile) and a LoRA run
#      (benchmarks/gpu_throughput.py).
# Writes $OUT/gpu_check.json (or benchmarks/results/gpu_check.json) and the logs next to it.
# Usage: bash benchmarks/gpu_check.sh          (from anywhere; SST-2 from TUNEFORGE_SST2 or /work/shared/data/sst2)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TUNEFORGE_TEST_DEVICE=cuda
export TUNEFORGE_CACHE="$(mktemp -d)"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; \
print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| bf16', torch.cuda.is_bf16_supported())" \
  || exit 3
timeout 200 python -m pytest -q -x -p no:cacheprovider -s tests/test_gpu.py tests/test_train.py tests/test_resume.py \
  2>&1 | tee "$out/gpu_check_tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}
timeout 330 python benchmarks/gpu_throughput.py --out "$out/gpu_check.json" --tests-rc "$tests_rc" \
  2>&1 | tee "$out/gpu_check_throughput.log"
echo "tiny tests on CUDA: exit $tests_rc; results: $out/gpu_check.json"

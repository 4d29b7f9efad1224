#!/usr/bin/env bash
# The GPU measurements of benchmarks/, in one call on a CUDA machine with no network (repo root; $OUT collects results):
# train_throughput (ours vs SAELens vs dictionary_learning), gpu_checks (fast == plain, determinism, ReLU switch)
# and gpu_profile (where a step's time goes). The other tools travel as wheels in .whl/ (see benchmarks/README.md),
# installed with --no-deps into /tmp/site.
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/sae_gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
python3 -c "import torch, sae_lens, dictionary_learning.trainers as d; print('torch', torch.__version__, 'sae_lens', sae_lens.__version__)" 2>&1 | tail -1
SAE_BENCH_OTHER_PY=$(command -v python3) timeout ${BENCH_S:-330} python3 benchmarks/train_throughput.py --device cuda \
  --rounds ${ROUNDS:-1} --steps 50 --warmup 5 --check-steps 3 --threads 8 --out "$OUT/train_throughput_gpu" 2>&1 \
  | grep -v -i warn | grep -v "^round"
[ -n "${SKIP_CHECKS:-}" ] || timeout ${CHECKS_S:-110} python3 benchmarks/gpu_checks.py --out "$OUT/gpu_checks" 2>&1 \
  | grep -v -i warn | tail -22
[ -n "${SKIP_PROFILE:-}" ] || timeout ${PROFILE_S:-60} python3 benchmarks/gpu_profile.py --out "$OUT/gpu_profile" 2>&1 \
  | grep -v -i "warn\|USDT\|self.profiler\|sparse_csr_tensor" | tail -40

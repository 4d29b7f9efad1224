#!/usr/bin/env bash
# The GPU measurements of benchmarks/, in ONE call on a CUDA machine with no network (run from the repo root):
#   bench    train_throughput.py --device cuda: ours vs SAELens vs dictionary_learning and % of the matmul ceiling
#            (default only TopK from fresh weights, the #10 target row, with the top-k alternatives as variants of
#            ours: fast-g<G> = row_topk over G slices, fast-triton = topk_triton.py; VARIANTS=... to choose;
#            BENCH_FULL=1 for the whole table with plain,fast, ~205 s)
#   checks   gpu_checks.py: fast == plain, train's deferred NaN check, host syncs, determinism, ReLU switch
#            (~45 s on the H200; CHECKS_ONLY=equal,deferred for less)
#   profile  gpu_profile.py: a TopK/ReLU step under torch.profiler, the sparse pieces timed alone, and the exact
#            top-k alternatives (torch.topk sorted=True/False, sort, two-stage over G groups, single-pass Triton: 'match')
#   harvest  harvest_gpu.py: harvesting tokens/s, ours vs full run_with_cache, fp32 + bf16 (random SmolLM2-135M)
#   toy      toy_sweep.py --device cuda at the gpu budget: batched vs a per-instance loop, three sweeps
# Each part has its own timeout (seconds: PROFILE_S BENCH_S HARVEST_S TOY_S CHECKS_S) and never runs past the
# whole call's TOTAL_S (default 480): a part gets min(its timeout, what is left - 10 s) and is skipped under 15 s.
# PARTS=profile,harvest (comma list) runs only those, in the order above (the #10 target and the checks of new
# GPU code first, so that a short call still brings them back). Everything a part writes goes to
# /tmp/sae_gpu_results/ and is packed after every part into $OUT/gpu_results.tgz (a call returns <= 8 files),
# beside $OUT/gpu_run.log (what was printed; each part's whole output is NAME.log in the tgz).
# DRY_RUN=1: every part on the CPU at tiny sizes (no GPU, no wheels), to check the wiring here; gpu_checks then
# only says it needs CUDA (rc=1).
#
# Before the call, in the lead's checkout with PyPI access and the venv active (export PYTHONPATH=$PWD):
#   bash benchmarks/other_tools/gpu_wheels.sh          # .whl/ (51.0 MB): SAELens, dictionary_learning, TL 3.9, ...
#   bash benchmarks/other_tools/gpu_harvest_files.sh   # .gpu_harvest/ (2.3 MB): TL 4 wheel + SmolLM2 tokenizer tgz
#   DRY_RUN=1 bash benchmarks/gpu_run.sh               # ~2 min on 2 cores; every part must end rc=0 but checks
# Both folders are git-ignored; the tree (~7.6 MB tracked) + both is ~61 MB of the 64 MiB (67.1 MB) a call carries.
# The device call (one machine start; expected ~5 min of GPU work, at most TOTAL_S=480 s):
#   run(command="bash benchmarks/gpu_run.sh", carry=[".whl", ".gpu_harvest"], timeout_s=540)
# Afterwards: tar xzf <files_at>/gpu_results.tgz -C /tmp/gpu_results; the files are named as benchmarks/ names them
# (gpu_profile.json, train_throughput_gpu.{md,json}, harvest_gpu.{md,json}, toy_sweep_*_gpu.json, gpu_checks.*).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1   # no network there: fail fast
DRY=${DRY_RUN:-}
OUT=${OUT:-/tmp/sae_gpu_out$([ -n "$DRY" ] && echo _dry)}; export OUT
R=${RESULTS:-/tmp/sae_gpu_results}; rm -rf "$R"; mkdir -p "$R" "$OUT"   # not under $OUT: a call returns <= 8 files
ROOT=$(pwd)
TOTAL_S=${TOTAL_S:-480}; T0=$SECONDS
PARTS=${PARTS:-bench,checks,profile,harvest,toy}
exec > >(tee -a "$OUT/gpu_run.log") 2>&1

left() { echo $(( TOTAL_S - (SECONDS - T0) )); }
pack() { tar czf "$OUT/.gpu_results.tgz" -C "$R" . && mv "$OUT/.gpu_results.tgz" "$OUT/gpu_results.tgz"; }
quiet() { grep -v -i "warn\|USDT\|self.profiler\|sparse_csr_tensor\|^round"; }
# part NAME TIMEOUT_S LINES CMD...: run CMD under min(TIMEOUT_S, left-10) s; full output to $R/NAME.log,
# the last LINES lines (filtered) to stdout.
part() {
  local name=$1 want=$2 lines=$3; shift 3
  [[ ",$PARTS," == *",$name,"* ]] || return 0
  local t=$(( $(left) - 10 )); (( want < t )) && t=$want
  if (( t < 15 )); then echo "=== $name SKIPPED: $(left) s of TOTAL_S left"; return 0; fi
  echo "=== $name: timeout $t s ($(left) s left) at $(date -u +%T)"
  local s0=$SECONDS
  timeout -k 5 "$t" "$@" > "$R/$name.log" 2>&1; local rc=$?
  quiet < "$R/$name.log" | tail -n "$lines"
  echo "=== $name: rc=$rc in $(( SECONDS - s0 )) s$( (( rc == 124 || rc == 137 )) && echo ' (TIMED OUT)')"
  pack
}

if [ -z "$DRY" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "!!! .whl install failed: SAELens/dictionary_learning rows and harvest (datasets) will fail"
  if ls .gpu_harvest/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tl4 .gpu_harvest/*.whl \
      || echo "!!! .gpu_harvest install failed"
  else echo "!!! no .gpu_harvest/ carried (benchmarks/other_tools/gpu_harvest_files.sh): harvest will fail"; fi
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
  PY_SITE=/tmp/site PY_TL4=/tmp/tl4:/tmp/site DEV=cuda BUD=gpu
  echo "install: $(( SECONDS - T0 )) s"
else
  PY_SITE= PY_TL4= DEV=cpu BUD=ci
fi
pp() { echo "$ROOT${1:+:$1}${PYTHONPATH:+:$PYTHONPATH}"; }   # repo root first, then the wheels' target(s)
PYTHONPATH=$(pp "$PY_SITE") python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ -z "$DRY" ]; then
  PROF=(--out "$R/gpu_profile")
  BENCH=(--device cuda --rounds "${ROUNDS:-1}" --steps 50 --warmup 5 --check-steps 3 --threads 8 --timing "${TIMING:-block}")
  [ -n "${BENCH_FULL:-}" ] || BENCH+=(--archs topk --starts init --variants "${VARIANTS:-fast,fast-g48,fast-g96,fast-triton}")
  HARV=(--out "$R/harvest_gpu")
  TOY_STEPS=${TOY_STEPS:-1000}
else
  PROF=(--dry-run --out "$R/gpu_profile")
  BENCH=(--device cpu --tools ours --archs topk --starts init --d-in 32 --expansion 4 --batch 64 --steps 2 --warmup 1
         --check-steps 1 --rounds 1 --threads 1 --variants fast,fast-g4,fast-triton)
  HARV=(--dry-run --out "$R/harvest_gpu")
  TOY_STEPS=5
fi

part bench "${BENCH_S:-$([ -n "${BENCH_FULL:-}" ] && echo 230 || echo 120)}" 12 \
  env PYTHONPATH="$(pp "$PY_SITE")" SAE_BENCH_OTHER_PY="$(command -v python3)" \
  python3 benchmarks/train_throughput.py "${BENCH[@]}" --out "$R/train_throughput_gpu"
part checks "${CHECKS_S:-75}" 24 env PYTHONPATH="$(pp "$PY_SITE")" \
  python3 benchmarks/gpu_checks.py --only "${CHECKS_ONLY:-equal,deferred,syncs,determinism,switch}" --out "$R/gpu_checks"
part profile "${PROFILE_S:-120}" 45 env PYTHONPATH="$(pp "$PY_SITE")" python3 benchmarks/gpu_profile.py "${PROF[@]}"
part harvest "${HARVEST_S:-120}" 8 env PYTHONPATH="$(pp "$PY_TL4")" python3 benchmarks/harvest_gpu.py "${HARV[@]}"
part toy "${TOY_S:-75}" 18 env PYTHONPATH="$(pp "$PY_SITE")" SAE_TUTORIAL_BUDGET=$BUD bash -c "
  set -e
  python3 benchmarks/toy_sweep.py --device $DEV --steps $TOY_STEPS --loop-subset 3 --out $R/toy_sweep_dimensionality_gpu.json
  python3 benchmarks/toy_sweep.py --device $DEV --steps $TOY_STEPS --loop-subset 6 --sweep phase_diagram --out $R/toy_sweep_phase_diagram_gpu.json
  python3 benchmarks/toy_sweep.py --device $DEV --steps $TOY_STEPS --loop-subset 2 --n 200 --m 20 --settings 20 --budget-steps 10000 --out $R/toy_sweep_paper_size_gpu.json"
pack
echo "=== done in $(( SECONDS - T0 )) s; $OUT: $(ls "$OUT" | tr '\n' ' ')"

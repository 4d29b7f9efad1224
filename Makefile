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

.PHONY: venv test reproduce readme sync clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

## make test: notebooks/modules/README in step, every notebook at the ci budget, then pytest.
test: $(STAMP)
	$(BIN)/python tests/sync.py check
	SAE_TUTORIAL_BUDGET=ci $(BIN)/nbdev-test --n-workers 2 --timing
	SAE_TUTORIAL_BUDGET=ci $(BIN)/python -m pytest -q tests

## make reproduce: the main job at the cpu budget (override with SAE_TUTORIAL_BUDGET=gpu).
## Until the language-model reproduction lands (notebook 07), it runs the toy-model reproduction.
reproduce: $(STAMP)
	@echo "make reproduce: the language-model reproduction (notebook 07) has not landed yet;"
	@echo "running the toy-model reproduction (notebook 01) at budget $${SAE_TUTORIAL_BUDGET:-cpu}; figures go to images/."
	SAE_TUTORIAL_BUDGET=$${SAE_TUTORIAL_BUDGET:-cpu} $(BIN)/sae-tutorial toy

readme: $(STAMP)
	$(BIN)/python tests/sync.py readme

sync: $(STAMP)
	$(BIN)/python tests/sync.py check

clean-venv:
	rm -rf $(VENV)

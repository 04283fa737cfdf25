# `make demo` and `make test` create .venv when it is missing and install the package into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-fast clean data gpu-check gpu-check-dry-run gpu-bundle

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/quickstart
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		-m ssl_toolkit.pretrain recipes/quickstart.yaml
	$(BIN)/ssl-toolkit probe runs/quickstart --baselines

# Real data that needs no download at run time: Debian's Fashion-MNIST package (the tests read it).
data:
	@test -d $(FASHION_MNIST) || { \
		echo "installing Debian's dataset-fashion-mnist (needs root)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; }

# Two pytest workers, one torch thread each (tests/conftest.py), each test file on one worker (its module
# fixtures made once); the session's shared runs are made once for both (conftest's made_once). A fixed
# count, whatever the machine: the same tests run alike everywhere.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile

test: $(STAMP) data
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST)

# The suite without the tests marked slow (subprocesses, several processes, torch.compile, the wheel build).
test-fast: $(STAMP) data
	$(BIN)/ruff check .
	$(PYTEST) -m "not slow"

# Every GPU figure in one run (at most 8 minutes on one H100/H200): a table on stdout, gpu_check.json and
# gpu_check.md in a new folder under gpu_check/, and the table in BENCHMARKS.md's GPU section. On a machine whose
# Python already holds PyTorch with CUDA: make gpu-check GPU_CHECK_PYTHON=python3
# On one without internet, add GPU_BUNDLE=gpu_bundle, the folder `make gpu-bundle` made where there is internet.
GPU_CHECK_OUT ?= gpu_check/$(shell date -u +%Y%m%d-%H%M%S)
GPU_CHECK_ARGS ?= --benchmarks BENCHMARKS.md
GPU_CHECK_PYTHON ?=
GPU_BUNDLE ?=
gpu-check: $(if $(GPU_CHECK_PYTHON),,$(STAMP))
	PYTHONPATH=. $(or $(GPU_CHECK_PYTHON),$(BIN)/python) tools/gpu_check.py --out $(GPU_CHECK_OUT) \
		$(if $(GPU_BUNDLE),--bundle $(GPU_BUNDLE)) $(GPU_CHECK_ARGS)

# What the check needs beside a CUDA PyTorch image, for a GPU machine without internet: kornia, kornia-rs and
# lightly wheels for its Python (GPU_PYTHON_VERSION, e.g. 3.12; default this one's) and Fashion-MNIST.
GPU_PYTHON_VERSION ?=
gpu-bundle: $(STAMP) data
	$(BIN)/python tools/gpu_bundle.py --out gpu_bundle $(if $(GPU_PYTHON_VERSION),--python-version $(GPU_PYTHON_VERSION))

# The same sections on the CPU at tiny sizes (under 2 minutes): what CI runs before a GPU is lent.
gpu-check-dry-run: $(STAMP) data
	rm -rf runs/gpu_check_dry_run
	$(BIN)/python tools/gpu_check.py --dry-run --out runs/gpu_check_dry_run

clean:
	rm -rf $(VENV) runs

# `make demo` and `make test` create .venv when it is missing and install the package into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-fast clean data

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

test: $(STAMP) data
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# The suite without the tests marked slow (subprocesses, several processes, torch.compile, the wheel build).
test-fast: $(STAMP) data
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs

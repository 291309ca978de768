# Set-up and the two commands of the README: `make demo` and `make test`.
# Everything is installed into ./.venv (override with VENV=...), so a fresh machine with Python 3.11 and pip
# needs nothing else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the CUDA build of torch (it runs on CPU too): PyPI's torchvision does not import with a CPU-only torch,
# which breaks nnU-Net's trainer search
TORCH := torch==2.14.1 torchvision==0.29.1
WORK ?= demo_work
# images/ + labels/ folder for the demo (default: $$NNUNET_SEMISUP_DEMO_DATA, else ../shared/data/msd_hippocampus)
DATA ?=

.PHONY: install demo test test-fast lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=64" wheel

$(VENV)/.deps: $(BIN)/python setup.cfg
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q "nnunetv2>=2.8,<2.9" pytest ruff
	touch $@

# the package is installed the way users install it (not editable): that also installs the .pth file that
# registers our trainers with nnU-Net, which the end-to-end tests rely on
install: $(VENV)/.deps
	$(BIN)/pip install -q --no-build-isolation .

demo: install
	$(BIN)/nnunet-semisup demo --work-dir $(WORK) $(if $(DATA),--data $(DATA))

lint: $(VENV)/.deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not e2e"

format: $(VENV)/.deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf build *.egg-info $(WORK)

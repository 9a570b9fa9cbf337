# Set-up is two commands on a fresh machine: `make demo` and `make test` (each installs first if needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch/torchvision are named in the same pip command so pip takes the CPU-usable local wheels.
PIP_INSTALL := $(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 -c constraints-cpu.txt -e ".[test]"

.PHONY: install test lint demo bench check clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PIP_INSTALL)
	touch $(STAMP)

test: $(STAMP)
	PYTHONFAULTHANDLER=1 $(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check gr_vl_verl tests bench data_prep
	$(VENV)/bin/ruff format --check gr_vl_verl tests bench data_prep

demo: $(STAMP)
	$(VENV)/bin/gr-vl demo

check: $(STAMP)
	$(VENV)/bin/gr-vl check

bench: $(STAMP)
	for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) outputs .pytest_cache .hypothesis

# pipelined: the two commands of the quick start, and a few more.
#   make demo   install into .venv, start a private daemon, run the quality pipeline, stop it
#   make test   install into .venv (and the MCP Inspector into .ci/node) and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKERS ?=
TARGET ?=

.PHONY: install demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	@bash scripts/make-venv.sh "$(PYTHON)" "$(VENV)"
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,examples]'
	@touch $@

install: $(VENV)/.installed

demo: install
	@WORKERS="$(WORKERS)" TARGET="$(TARGET)" VENV="$(VENV)" bash scripts/demo.sh

test: install
	@bash scripts/install-inspector.sh
	$(PY) -m pytest -q

bench: install
	$(PY) bench/throughput.py

lint: install
	$(PY) -m ruff check protocol daemon client tests examples bench

clean:
	rm -rf $(VENV) .demo examples/quality/.work

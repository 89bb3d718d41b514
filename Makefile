# `make demo` and `make test` each create .venv if missing, install, and run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On the project's CI machines the CPU torch wheel lies in /opt/wheels: pin it there so pip never
# resolves a multi-GB CUDA build, and pin numpy to its floor, so that CI tests the lowest torch and numpy
# pyproject.toml allows. Elsewhere a plain install gets the platform's normal torch.
PIP_EXTRA := $(shell [ -d /opt/wheels ] && echo "--find-links /opt/wheels -c constraints-ci.txt")
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(PIP_EXTRA) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/taskprompter demo --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache

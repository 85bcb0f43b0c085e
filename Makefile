# The README's two commands: `make run` (set up + default pipeline) and `make test` (set up + tests).
PYTHON ?= python3.11
VENV   ?= .venv
CORES  ?= all
BIN    := $(VENV)/bin

.PHONY: setup run test lint dryrun-paper clean-results

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/snakemake --cores $(CORES)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check workflow/lib workflow/scripts tests
	$(BIN)/snakemake --lint

dryrun-paper: setup
	$(BIN)/snakemake -n --quiet rules --configfile config/paper.yaml --replace-workflow-config

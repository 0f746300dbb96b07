# Every target bootstraps itself: on a fresh clone `make test` or `make run` creates .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTE := -m jupyter nbconvert --to notebook --execute --inplace \
           --ExecutePreprocessor.timeout=1200 --ExecutePreprocessor.kernel_name=python3 \
           --ExecutePreprocessor.record_timing=False

.DEFAULT_GOAL := help
.PHONY: help setup run test lab bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv: CPU torch first, then requirements.txt, then helpers (editable); no-op when up to date

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$$(grep -E '^torch==' requirements.txt)"
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP) ## execute every notebook in order, headless, in place (about 4 minutes on 2 CPU cores)
	@for nb in $(NOTEBOOKS); do echo "== $$nb"; $(PY) $(EXECUTE) "$$nb" || exit 1; done

test: $(STAMP) ## unit tests, then every notebook under nbval (outputs compared with the committed ones)
	$(PY) -m pytest tests notebooks --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

lab: $(STAMP) ## open the series in JupyterLab
	$(PY) -m jupyter lab notebooks/01_peft_motivation.ipynb

bench: $(STAMP) ## run every benchmark in benchmarks/, then write benchmarks/RESULTS.md (about 8 minutes)
	@for b in $(filter-out benchmarks/report.py benchmarks/_%,$(wildcard benchmarks/*.py)); do echo "== $$b"; $(PY) "$$b" || exit 1; done
	$(PY) benchmarks/report.py

clean: ## remove .venv, caches and saved adapters (notebooks and data stay)
	rm -rf $(VENV) .pytest_cache adapters helpers/__pycache__ tests/__pycache__ *.egg-info

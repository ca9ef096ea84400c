# Two entry points (see README): `make demo` runs the main job on the bundled sample data, `make test` the tests.
# Both create .venv on first use: CPU torch first (`torch==2.13.0`), then the project with its pinned dependencies.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medlvr-installed

.PHONY: install demo test bench clean-demo dagster-dev ui-check harness-venvs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	DAGSTER_HOME=$(CURDIR)/pipelines/dagster_home $(VENV)/bin/medlvr demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_corpus.py
	$(PY) benchmarks/bench_latent_decode.py
	$(PY) benchmarks/bench_sft.py
	$(PY) benchmarks/bench_vlpo.py
	$(PY) benchmarks/bench_eval.py

# The Dagster UI on the project's persistent instance (the one the main job writes to): `dg dev` (dagster-dg-cli, in
# the dev extra), the command that supersedes `dagster dev`, serving the code location of workspace.yaml.
dagster-dev: install
	DAGSTER_HOME=$(CURDIR)/pipelines/dagster_home $(VENV)/bin/dg dev -w workspace.yaml -h 127.0.0.1 -p 3000

# lmms-eval in its own environment (.venv-harness-lmms-eval), for tests/evaluation/test_harnesses.py
harness-venvs:
	scripts/harness_venv.sh lmms-eval

ui-check: install
	$(PY) scripts/ui_check.py

# Forget the main job: its outputs and the instance's run history (keeps pipelines/dagster_home/dagster.yaml).
clean-demo:
	cd pipelines/dagster_home && find . -mindepth 1 -maxdepth 1 ! -name dagster.yaml ! -name .gitignore -exec rm -rf {} +

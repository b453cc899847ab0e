# make demo | make test | make lint | make bench — each sets itself up on a fresh machine.
VENV ?= .venv
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench config-docs

setup:
	@bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh $(DEMO_ARGS)

# Two processes: the tests on the session's Ray cluster in one, the rest beside them (tests/conftest.py).
test: setup
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check platform tests jobs benchmarks serve scripts
	$(VENV)/bin/ruff format --check platform tests jobs benchmarks serve scripts
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: setup
	@for b in benchmarks/*.py; do echo "# $$b"; $(VENV)/bin/python $$b; done

config-docs: setup
	$(VENV)/bin/python -m polymodal.config.reference docs/config.md

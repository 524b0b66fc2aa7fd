# banger developer targets. `make run` and `make test` set up what is missing first.
# uv from PATH, else where scripts/setup.sh installs it (pip --user).
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup build run test test-fast lint coverage bench-create bench-tui bench-exec bench-cli bench-suspend verify clean

setup:
	@bash scripts/setup.sh

build: setup
	$(UV) build --quiet
	@echo "built: $$(ls dist/*.whl)"

run: setup
	$(UV) run banger vm run $(ARGS)

test: setup
	$(UV) run pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(UV) run pytest -q -m "not boot" $(PYTEST_ARGS)

lint: setup
	$(UV) run ruff check src tests scripts
	$(UV) run ruff format --check src tests scripts
	$(UV) run mypy

coverage: setup
	$(UV) run pytest -q --cov=banger --cov-report=term-missing $(PYTEST_ARGS)

bench-create: setup
	$(UV) run python scripts/bench_create.py $(ARGS)

bench-tui: setup
	$(UV) run python scripts/bench_tui.py $(ARGS)

bench-exec: setup
	$(UV) run python scripts/bench_exec.py $(ARGS)

bench-cli: setup
	$(UV) run python scripts/bench_cli.py $(ARGS)

bench-suspend: setup
	$(UV) run python scripts/bench_suspend.py $(ARGS)

verify: setup
	bash scripts/verify.sh $(ARGS)

clean:
	rm -rf dist .pytest_cache .mypy_cache .ruff_cache .coverage

# Two commands: `make run` (dev mode: embedded broker, vendor sandboxes, demo traffic) and `make test`.
PYTHON ?= python3.11
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

.PHONY: run test lint typecheck unit bench clean env tools image

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON) --all-extras
	touch $@

env: $(VENV)/.synced

run: env
	$(VENV)/bin/conversion-relay dev

lint: env
	$(VENV)/bin/ruff check service tests
	$(VENV)/bin/ruff format --check service tests
	$(VENV)/bin/mypy

# promtool (for the alert-rule tests) from Debian's prometheus package when root and apt exist;
# otherwise the script says why and those two tests skip with that reason.
tools:
	bash scripts/install-promtool.sh

test: env lint tools
	$(VENV)/bin/pytest

unit: env
	$(VENV)/bin/pytest tests/unit

# Benchmarks (not part of `make test`): bench/README.md. BENCH_ARGS="--quick" for a smoke run.
bench: env
	VENV=$(VENV) bash bench/setup.sh
	$(VENV)/bin/python -m bench.run $(BENCH_ARGS)

# The container image: docker where an engine answers, else buildah (scripts/install-buildah.sh,
# as root), with local stand-ins for base images that cannot be pulled (the script says so).
image: $(UV)
	bash scripts/build-image.sh

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache

# Two entry points: `make demo` and `make test`. Both create .venv on first use and reuse it
# while pyproject.toml is unchanged; model and data are cached under ~/.cache/fedlora.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast fmt clean bench-server bench-client bench-round bench-secagg bench-quality bench-quality-pinned

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check --progress-bar off -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/fedlora run --config configs/demo.toml out_dir=runs/demo

test: $(STAMP)
	$(BIN)/ruff check src benchmarks tests
	$(BIN)/ruff format --check src benchmarks tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (real model, several processes).
test-fast: $(STAMP)
	$(BIN)/ruff check src benchmarks tests
	$(BIN)/python -m pytest -q -m "not slow"

fmt: $(STAMP)
	$(BIN)/ruff check --fix src benchmarks tests
	$(BIN)/ruff format src benchmarks tests

# Benchmarks measure the project; each takes the machine to itself. ARGS passes options,
# e.g. make bench-server ARGS="--shape llama-3.2-3b --rank 64 --clients 4".
bench-server: $(STAMP)
	$(BIN)/python -m benchmarks.server $(ARGS)

bench-client: $(STAMP)
	$(BIN)/python -m benchmarks.client $(ARGS)

bench-round: $(STAMP)
	$(BIN)/python -m benchmarks.round $(ARGS)

bench-secagg: $(STAMP)
	$(BIN)/python -m benchmarks.secagg $(ARGS)

bench-quality: $(STAMP)
	$(BIN)/python -m benchmarks.quality $(ARGS)

# The quality benchmark from one commit in a worktree and venv of its own (PIN=<commit>), its
# records kept here: main may change between sittings.
bench-quality-pinned: $(STAMP)
	$(BIN)/python -m benchmarks.quality.pinned $(PIN) $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis

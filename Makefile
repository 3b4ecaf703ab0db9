# Two commands from a fresh clone: `make demo` and `make test`. Each sets up what it needs first
# (virtual environment, editable install with dev extras, Kafka jars) and is safe to run again.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cbx-installed

.PHONY: setup kafka-jars demo test fuzz faults lint typecheck schemas-check format bench bench-national clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

kafka-jars: setup
	$(BIN)/cbx kafka install

demo: kafka-jars
	$(BIN)/cbx demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

schemas-check: setup
	$(BIN)/cbx schemas check

test: kafka-jars lint typecheck schemas-check
	$(BIN)/pytest

# The fault suite on a three-broker cluster at length: 10,000 messages a stream, a broker down for
# a minute (make test runs it with 600 messages).
faults: kafka-jars
	CBX_FAULTS_FULL=1 $(BIN)/pytest -s -p no:cacheprovider tests/test_faults.py

# The property-based fuzz run through HTTP ingest, the router and every recipient, at length
# (make test runs 500 cases of it). CBX_FUZZ_CASES and CBX_FUZZ_SEED change the run.
fuzz: kafka-jars
	CBX_FUZZ_CASES=$${CBX_FUZZ_CASES:-10000} $(BIN)/pytest -s -p no:cacheprovider tests/test_fuzz.py

bench: kafka-jars
	$(BIN)/python -m benchmarks.bench_codec
	$(BIN)/python -m benchmarks.bench_protection
	$(BIN)/python -m benchmarks.bench_router
	$(BIN)/python -m benchmarks.bench_e2e
	$(BIN)/python -m benchmarks.bench_console
	$(BIN)/python -m benchmarks.bench_cold
	$(BIN)/python -m benchmarks.bench_urgent
	$(BIN)/python -m benchmarks.bench_registry
	$(BIN)/python -m benchmarks.bench_clients
	$(BIN)/python -m benchmarks.bench_handover

# Every council, force and ICB and 3,000 providers on one broker, 83,000 placements and a day of
# traffic with restarts (benchmarks/bench_national.py).
bench-national: kafka-jars
	$(BIN)/python -m benchmarks.bench_national

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	-$(BIN)/cbx kafka stop
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

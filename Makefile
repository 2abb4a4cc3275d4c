# RTDS: the two commands a newcomer needs are `make run` and `make test`.

CARGO    ?= cargo
RELEASE  := target/release

VENV     := .venv
PYMODBUS := pymodbus==3.16.*

.PHONY: all build run test lint check venv bench clean

all: build

build:
	$(CARGO) build --release --bins

# Starts the PLC simulator and RTDS on the demo configuration. Values land in
# data/rtds.db; Ctrl-C stops both.
run: build
	@mkdir -p data
	@$(RELEASE)/rtds-sim --port 5020 > data/rtds-sim.out 2>&1 & sim=$$!; \
	trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	for i in 1 2 3 4 5 6 7 8 9 10; do grep -q listening data/rtds-sim.out 2>/dev/null && break; sleep 0.2; done; \
	if ! kill -0 $$sim 2>/dev/null; then cat data/rtds-sim.out >&2; \
	    echo "make run: the simulator could not start: is port 5020, which conf/rtds.ron polls, in use?" >&2; exit 1; fi; \
	echo "rtds-sim (PLC simulator) listening on 127.0.0.1:5020, pid $$sim"; \
	echo "rtds running on conf/rtds.ron; Ctrl-C stops both. In another terminal:"; \
	echo "    sqlite3 -header -column data/rtds.db 'select * from current'"; \
	echo "    $(RELEASE)/rtds status -c conf/rtds.ron"; \
	$(RELEASE)/rtds run -c conf/rtds.ron

# The whole suite: formatting, lints, unit and end-to-end tests (the latter
# against the simulator and against pymodbus, installed into .venv).
test: lint venv
	$(CARGO) test

# Figures for this machine (not part of `make test`): a table on stdout and
# target/bench.json.
bench:
	$(CARGO) bench --bench bench

# The independent Modbus peer the tests use: pymodbus from PyPI in a venv.
venv: $(VENV)/.pymodbus

$(VENV)/.pymodbus:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check '$(PYMODBUS)'
	touch $@

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Validates the demo configuration and prints its scan plan.
check: build
	$(RELEASE)/rtds check -c conf/rtds.ron

clean:
	$(CARGO) clean
	rm -rf data $(VENV)

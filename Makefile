# RTDS: the two commands a newcomer needs are `make run` and `make test`.

CARGO    ?= cargo
RELEASE  := target/release

VENV     := .venv
PEERS    := 'pymodbus==3.16.*' 'asyncua==2.1.*' 'pyserial==3.5' 'paho-mqtt==2.2.*' 'protobuf==7.36.*'
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
AARCH64  := aarch64-unknown-linux-gnu
ARMV7    := armv7-unknown-linux-gnueabihf

# `make install PREFIX=… DESTDIR=…` takes the binaries from BIN_DIR.
PREFIX   ?= /usr/local
DESTDIR  ?=
BIN_DIR  ?= $(RELEASE)

.PHONY: all build run test lint check venv bench clean deps-run deps-test \
        cross-aarch64 cross-armv7 test-arm install dist dist-aarch64 dist-armv7 \
        deb deb-amd64 deb-arm64 deb-armhf

all: build

build: deps-run
	$(CARGO) build --release --bins

# System packages the command needs and the machine lacks (sudo when not
# root); quick when everything is there. See .ci/deps.
deps-run:
	@.ci/deps run

deps-test:
	@.ci/deps test

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
	echo "    or open http://127.0.0.1:8080/ (the status page)"; \
	$(RELEASE)/rtds run -c conf/rtds.ron

# The whole suite, everything CI runs: formatting, lints, unit and
# end-to-end tests (against the simulator, pymodbus in .venv, PostgreSQL,
# Samba), then the ARM builds under qemu.
test: deps-test lint venv
	$(CARGO) test
	$(MAKE) --no-print-directory test-arm

# Figures for this machine (not part of `make test`): a table on stdout and
# target/bench.json.
bench:
	@.ci/deps bench
	@$(MAKE) --no-print-directory venv
	$(CARGO) build --profile profiling --bins --example archive_load
	$(CARGO) bench --bench bench

# The independent peers the tests use, from PyPI in a venv: pymodbus
# (Modbus TCP and RTU; pyserial for its serial server) and asyncua (OPC UA).
# Reinstalled when PEERS changes (the stamp depends on this Makefile).
venv: $(VENV)/.peers

$(VENV)/.peers: Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PEERS)
	touch $@

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Validates the demo configuration and prints its scan plan.
check: build
	$(RELEASE)/rtds check -c conf/rtds.ron

# ARM gateways: release binaries with Debian's cross gcc (linker settings in
# .cargo/config.toml), run under qemu-user by test-arm.
# ODBC is left out of ARM builds: linking it needs the target's libodbc
# (see README); CROSS_FEATURES="opcua odbc" puts it back. OPC UA is in:
# open62541 builds with the same cross gcc, and test-arm reads asyncua.
# The ARM builds optimise for size (opt-level z, against s for x86-64): a
# gateway's flash is small, and the aarch64 binary stays under 6 MiB with
# OPC UA, MQTT and TLS (docs/performance.md: binary size).
CROSS_FEATURES ?= opcua
CROSS_OPT      ?= z
cross-aarch64:
	CARGO_PROFILE_RELEASE_OPT_LEVEL=$(CROSS_OPT) $(CARGO) build --release --bins --target $(AARCH64) --no-default-features --features "$(CROSS_FEATURES)"

cross-armv7:
	CARGO_PROFILE_RELEASE_OPT_LEVEL=$(CROSS_OPT) $(CARGO) build --release --bins --target $(ARMV7) --no-default-features --features "$(CROSS_FEATURES)"

test-arm: cross-aarch64 cross-armv7 venv
	cross/test-arm.sh $(AARCH64) qemu-aarch64 /usr/aarch64-linux-gnu "$(CROSS_FEATURES)"
	cross/test-arm.sh $(ARMV7) qemu-arm /usr/arm-linux-gnueabihf "$(CROSS_FEATURES)"
	$(MAKE) --no-print-directory deb-arm64 deb-armhf
	cross/deb/check.sh target/deb/rtds_$(VERSION)-1_arm64.deb arm64 AArch64
	cross/deb/check.sh target/deb/rtds_$(VERSION)-1_armhf.deb armhf ARM
	@echo "test-arm: 2 passed, 0 failed; arm64 and armhf packages checked"

# Debian packages (dpkg-deb and a small control tree: cross/deb/build.sh)
# in target/deb: rtds_VERSION-1_ARCH.deb for amd64 (this machine's release
# build, with ODBC), arm64 and armhf (the cross builds). The amd64 one is
# installed for real by tests/package.rs.
deb: deb-amd64 deb-arm64 deb-armhf

deb-amd64: build
	cross/deb/build.sh $(RELEASE) amd64 target/deb

deb-arm64:
	@test -x target/$(AARCH64)/release/rtds || $(MAKE) --no-print-directory cross-aarch64
	cross/deb/build.sh target/$(AARCH64)/release arm64 target/deb

deb-armhf:
	@test -x target/$(ARMV7)/release/rtds || $(MAKE) --no-print-directory cross-armv7
	cross/deb/build.sh target/$(ARMV7)/release armhf target/deb

# The usual layout: binaries in PREFIX/bin, configuration in /etc/rtds, data
# in /var/lib/rtds, logs in /var/log/rtds, a SysV init script and a systemd
# unit. An existing /etc/rtds/rtds.ron or /etc/default/rtds is kept (the new
# one lands beside it as .dist). Run as root without DESTDIR, it also creates
# the unprivileged user `rtds` that owns the data and log directories.
install:
	@test -x $(BIN_DIR)/rtds || { echo "no $(BIN_DIR)/rtds: run make build (or make cross-…) first" >&2; exit 1; }
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/doc/rtds \
	    $(DESTDIR)/etc/rtds/scripts $(DESTDIR)/etc/init.d $(DESTDIR)/etc/default \
	    $(DESTDIR)/etc/logrotate.d $(DESTDIR)/lib/systemd/system \
	    $(DESTDIR)/var/lib/rtds $(DESTDIR)/var/log/rtds
	install -m 755 $(BIN_DIR)/rtds $(BIN_DIR)/rtds-sim $(DESTDIR)$(PREFIX)/bin/
	install -m 644 scripts/*.rhai $(DESTDIR)/etc/rtds/scripts/
	install -m 644 README.md $(DESTDIR)$(PREFIX)/share/doc/rtds/
	cp -r docs $(DESTDIR)$(PREFIX)/share/doc/rtds/
	install -m 755 historian/rtds_reader.py $(DESTDIR)$(PREFIX)/share/doc/rtds/
	install -m 644 conf/tags.csv conf/config.ods $(DESTDIR)/etc/rtds/
	@if [ -e $(DESTDIR)/etc/rtds/rtds.ron ]; then dest=rtds.ron.dist; else dest=rtds.ron; fi; \
	    sed -e 's|"../data/rtds.log"|"/var/log/rtds/rtds.log"|' \
	        -e 's|"../data/rtds.db"|"/var/lib/rtds/rtds.db"|' \
	        -e 's|"../scripts/|"scripts/|g' \
	        -e 's|^// RTDS demo configuration:.*|// RTDS configuration as installed (/etc/rtds/rtds.ron): the demo one, polling|' \
	        -e 's|^// 127.0.0.1:5020. `make run` starts both.*|// rtds-sim on 127.0.0.1:5020. Edit connectors and tags for your PLCs, check with|' \
	        -e "s|^// against this file's directory.|// rtds check -c /etc/rtds/rtds.ron, apply with /etc/init.d/rtds reload.|" \
	        conf/rtds.ron > $(DESTDIR)/etc/rtds/$$dest
	@if [ -e $(DESTDIR)/etc/default/rtds ]; then dest=rtds.dist; else dest=rtds; fi; \
	    sed 's|@PREFIX@|$(PREFIX)|g' cross/rtds.default > $(DESTDIR)/etc/default/$$dest
	sed 's|@PREFIX@|$(PREFIX)|g' cross/rtds.init > $(DESTDIR)/etc/init.d/rtds
	chmod 755 $(DESTDIR)/etc/init.d/rtds
	sed 's|@PREFIX@|$(PREFIX)|g' cross/rtds.service > $(DESTDIR)/lib/systemd/system/rtds.service
	install -m 644 cross/rtds.logrotate $(DESTDIR)/etc/logrotate.d/rtds
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
	    id rtds >/dev/null 2>&1 || useradd --system --home-dir /var/lib/rtds --no-create-home \
	        --shell /usr/sbin/nologin rtds; \
	    chown rtds:rtds /var/lib/rtds /var/log/rtds; \
	fi

# A tarball of the installed tree for one gateway architecture: unpack it at /.
dist:
	rm -rf target/dist/rtds-$(VERSION)-$(ARCH)
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/target/dist/rtds-$(VERSION)-$(ARCH) \
	    BIN_DIR=target/$(TARGET)/release
	tar -C target/dist/rtds-$(VERSION)-$(ARCH) --owner=0 --group=0 -czf target/rtds-$(VERSION)-$(ARCH).tar.gz .
	@echo "built target/rtds-$(VERSION)-$(ARCH).tar.gz"

dist-aarch64: cross-aarch64
	$(MAKE) --no-print-directory dist TARGET=$(AARCH64) ARCH=aarch64

dist-armv7: cross-armv7
	$(MAKE) --no-print-directory dist TARGET=$(ARMV7) ARCH=armv7

clean:
	$(CARGO) clean
	rm -rf data $(VENV)

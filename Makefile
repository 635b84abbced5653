# SnpGuard — top-level build. `make demo` and `make test` are the two
# commands a fresh Debian machine needs (see README.md).

CARGO ?= cargo
BUILD_DIR ?= build
SNPGUARD_TESTDATA ?= $(abspath ../shared/testdata/snp)
export SNPGUARD_TESTDATA
# The slow tests' fixtures (see test-convert): the guests' root file
# systems and the fixed libguestfs appliance.
SNPGUARD_TEST_ROOTFS ?= $(BUILD_DIR)/guest/initramfs-tools/rootfs.tar
SNPGUARD_TEST_ROOTFS_DRACUT ?= $(BUILD_DIR)/guest/dracut/rootfs.tar
GUESTFS_APPLIANCE ?= $(BUILD_DIR)/guestfs-appliance

.PHONY: all build deps test test-convert lint unit check-units check-install check-scripts \
	install demo bench clean agent agent-sim check-agent check-shell check-launch test-cockpit \
	system-test test-e2e e2e-boots fuzz guest-rootfs slow-tests test-sigkill \
	lint-rust deny deny-advisories deb test-deb host-rootfs test-host

# Install layout (`make install DESTDIR=… PREFIX=/usr`). The repository
# mirrors /usr; binaries come from $(TARGET_DIR) (run `make build` first).
PREFIX ?= /usr
DESTDIR ?=
TARGET_DIR ?= target/release
BINDIR = $(PREFIX)/bin
LIBEXECDIR = $(PREFIX)/libexec/snpguard
UNITDIR = $(PREFIX)/lib/systemd/system
SYSUSERSDIR = $(PREFIX)/lib/sysusers.d
TMPFILESDIR = $(PREFIX)/lib/tmpfiles.d
DBUSDIR = $(PREFIX)/share/dbus-1
POLKITDIR = $(PREFIX)/share/polkit-1/actions
POLKITRULESDIR = $(PREFIX)/share/polkit-1/rules.d
AGENTDIR = $(PREFIX)/lib/snpguard
# Hooks for the guest image (`convert` copies them into the guest).
KERNELHOOKDIR = $(PREFIX)/share/snpguard/kernel/postinst.d
COCKPITDIR = $(PREFIX)/share/cockpit/snpguard
COCKPIT_FILES = $(sort $(wildcard cockpit/*.html cockpit/*.js cockpit/*.css cockpit/manifest.json))

# The static guest agent (x86_64 musl, `agent` profile: size-optimised,
# stripped). AGENT_BIN is what `make install` and the initrd modules use;
# AGENT_SIM_BIN is the test-only build with the simulated report source.
AGENT_TARGET = x86_64-unknown-linux-musl
AGENT_BIN ?= target/$(AGENT_TARGET)/agent/snpguard-agent
AGENT_SIM_BIN ?= target/$(AGENT_TARGET)/agent-sim/snpguard-agent
AGENT_MAX_BYTES = 4194304
AGENT_CARGO = CC_x86_64_unknown_linux_musl=musl-gcc $(CARGO) build -p snpguard-agent \
	--target $(AGENT_TARGET) --locked
DBUS_INTERFACES = $(sort $(wildcard dbus/interfaces/*.xml))
# Manual pages: snpguardctl*.1 and snpguardd.8 generated from the command
# lines (kept current by snpguardctl's generated_docs_are_current test),
# the section-5 pages hand-written; bash completion from clap_complete.
MANDIR = $(PREFIX)/share/man
BASHCOMPDIR = $(PREFIX)/share/bash-completion/completions
MAN1_PAGES = $(sort $(wildcard man/*.1))
MAN5_PAGES = $(sort $(wildcard man/*.5))
MAN8_PAGES = $(sort $(wildcard man/*.8))
SHAREDIR = $(PREFIX)/share/snpguard
# Shell scripts checked by `make check-scripts` (sh -n / bash -n, shellcheck).
SHELL_SCRIPTS = $(wildcard scripts/*.sh tests/*.sh tests/lib/*.sh tests/guest/*.sh tests/host/*.sh) \
	initramfs-tools/hooks/snpguard initramfs-tools/scripts/local-top/snpguard \
	dracut/90snpguard/module-setup.sh dracut/90snpguard/snpguard-unlock.sh

# $(call install-file,MODE,SOURCE,DESTINATION): fails naming the missing
# source rather than installing a partial tree.
define install-file
	@test -f '$(2)' || { echo "install: $(2) is missing" >&2; exit 1; }
	install -D -m $(1) '$(2)' '$(DESTDIR)$(3)'
endef

all: build

deps:
	./scripts/setup-deps.sh

build:
	$(CARGO) build --release --workspace --locked

# Formatting, clippy at -D warnings, and the dependency rules (deny.toml).
lint: lint-rust deny

lint-rust:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# cargo-deny (deny.toml): licences allowed by name, duplicate versions
# reported, crates.io the only source. Installs the pinned cargo-deny
# when missing. The advisories need the RustSec database from github.com:
# `make deny-advisories` where that is reachable.
deny:
	./scripts/setup-deps.sh deny
	$(CARGO) deny --locked check bans licenses sources

deny-advisories:
	./scripts/setup-deps.sh deny
	$(CARGO) deny --locked check advisories

# The integration tests run the workspace's binaries (snpguardd,
# snpguardctl, snpguard-sim) next to their own: build them all first.
unit:
	$(CARGO) build --workspace --locked
	$(CARGO) test --workspace --locked
	$(CARGO) test -p snpguard-agent --features simulator --locked

# The static agent; installs musl-tools and the rustup target if missing.
# check-agent.sh --production: the binary has no simulated report source.
agent:
	./scripts/setup-deps.sh agent
	$(AGENT_CARGO) --profile agent
	./scripts/check-agent.sh $(AGENT_BIN) $(AGENT_MAX_BYTES) --production

# The agent with the simulated report source (QEMU tests only). Built in
# the same profile as the production agent, so the musl dependencies are
# compiled once for both; cargo puts either build at $(AGENT_BIN), so the
# simulator build is copied to $(AGENT_SIM_BIN) and the production one
# rebuilt in its place (only the agent crate relinks). `make install`
# refuses a simulator build at $(AGENT_BIN) all the same.
agent-sim:
	./scripts/setup-deps.sh agent
	$(AGENT_CARGO) --profile agent --features simulator
	./scripts/check-agent.sh $(AGENT_BIN) $(AGENT_MAX_BYTES) --simulator
	install -D -m 0755 $(AGENT_BIN) $(AGENT_SIM_BIN)
	$(AGENT_CARGO) --profile agent
	./scripts/check-agent.sh $(AGENT_BIN) $(AGENT_MAX_BYTES) --production

check-agent: agent agent-sim

# Unit hardening score (<= 1.6), unit syntax, sysusers/tmpfiles snippets.
check-units:
	./scripts/check-units.sh

# ShellCheck on scripts/, tests/ and the guest's kernel hooks.
check-shell:
	./scripts/check-shell.sh

# `make install` into a scratch DESTDIR lays out the expected tree.
check-install:
	./tests/install-tree.sh

# Syntax and shellcheck of every shell script, the initrd modules first.
check-scripts:
	@for f in $(SHELL_SCRIPTS); do \
		case "$$(head -n 1 "$$f")" in *bash*) bash -n "$$f" ;; *) sh -n "$$f" ;; esac \
			|| { echo "check-scripts: $$f has a syntax error" >&2; exit 1; }; \
	done
	shellcheck $(SHELL_SCRIPTS)

# The initrd boot test (slow: a Debian guest per initrd flavour, booted
# under QEMU/TCG; needs root). Guest root file systems are cached in
# $(BUILD_DIR)/guest-rootfs. See tests/system/README.md.
# The agent in the guests is the simulator build (the only one that can
# attest without SEV-SNP hardware).
system-test: agent-sim
	$(CARGO) build --workspace --locked
	SNPGUARD_AGENT=$(abspath $(AGENT_SIM_BIN)) \
		$(CARGO) test --workspace --locked --lib --test boot --test initrd \
		-- --ignored --test-threads=1 $(SYSTEM_TEST_FILTER)

# The dracut flavour's wrong-measurement boot (~3 minutes under TCG; the
# same agent refusal is booted with initramfs-tools) runs with
# `make system-test SYSTEM_TEST_FILTER=`.
SYSTEM_TEST_FILTER ?= --skip dracut_guest_with_a_wrong_measurement_powers_off

# scripts/launch-qemu-snp.sh: --dry-run against a real bundle, a faked
# SNP host with a fake QEMU, --from-partition (guestfish), refusals.
# snpguardctl is the workspace build's (a build of the package alone
# would resolve other features and recompile); guestfish uses the fixed
# appliance of test-convert.
check-launch: $(GUESTFS_APPLIANCE)/root
	$(CARGO) build --workspace --locked
	SNPGUARD_CTL=$(abspath target/debug/snpguardctl) LIBGUESTFS_BACKEND=direct \
		LIBGUESTFS_PATH='$(abspath $(GUESTFS_APPLIANCE))' ./tests/launch-script.sh

# The Cockpit page in headless Chromium against real cockpit-ws and
# snpguardd on a private bus (tests/cockpit; screenshots in
# $(BUILD_DIR)/cockpit-test).
test-cockpit:
	./scripts/setup-deps.sh cockpit
	$(CARGO) build --workspace --locked
	cd tests/cockpit && npm ci --no-audit --no-fund --silent
	cd tests/cockpit && COCKPIT_TEST_OUT=$(abspath $(BUILD_DIR))/cockpit-test \
		SNPGUARD_BIN_DIR=$(abspath target/debug) npm test

# Every test, after installing what the tests need (idempotent). The
# Debian packages install (scripts/setup-deps.sh) while rustfmt and
# clippy run, which need only rustup's components; then the guests' root
# file systems (debootstrap: mostly waiting on the network and dpkg), the
# fixed libguestfs appliance and cargo-deny (install and check: `make
# lint` is lint-rust plus deny) are built beside the builds and quick
# tests, in a lane of their own (scripts/lanes.sh; the [checks] lane's
# setup-deps.sh waits for the [guests] lane's to end), then the slow
# suites run. LANES_EPOCH: every lane line shows the seconds since `make
# test` began.
test:
	export LANES_EPOCH="$${LANES_EPOCH:-$$(date +%s)}"; \
	./scripts/setup-deps.sh rust && ./scripts/lanes.sh \
		"checks=$(MAKE) --no-print-directory lint-rust && ./scripts/setup-deps.sh \
			&& $(MAKE) --no-print-directory check-shell check-scripts check-units \
			check-install check-agent unit test-cockpit" \
		"guests=./scripts/setup-deps.sh \
			&& $(MAKE) --no-print-directory guest-rootfs host-rootfs $(GUESTFS_APPLIANCE)/root deny" \
	&& $(MAKE) --no-print-directory slow-tests

# The slow suites in two lanes side by side (scripts/lanes.sh; each line
# prefixed [convert] or [boot]). [convert]: the simple, --no-encryption
# and split conversions, then the end-to-end boots from the split one
# (e2e-boots), then the embed tests. [boot]: check-launch, system-test,
# the ESP/dracut conversion, the refusals and Ctrl-C, then test-sigkill
# and test-host (with test-deb). In the stop-30 clean run (embed still in
# [boot]) [boot] ended at least 416 s after [convert]; the embed tests
# (171 s) moved to [convert] to even them. A TCG guest or
# a libguestfs appliance keeps about one core busy, so the lanes fill two
# cores. The workspace, the test binaries and the libguestfs appliance are
# built first: the lanes share them.
slow-tests: guest-rootfs agent-sim $(GUESTFS_APPLIANCE)/root
	$(CARGO) build --workspace --locked
	$(CARGO) test --locked --no-run --workspace --test convert --test embed
	$(CARGO) test --locked --no-run --workspace --lib --test boot --test initrd --test e2e
	$(CARGO) test --locked --no-run --workspace --test integration
	./scripts/lanes.sh \
		"convert=$(MAKE) --no-print-directory test-convert CONVERT_TESTS='--test convert' \
			CONVERT_TEST_FILTER='converts_the_simple_layout no_encryption_stages $(E2E_GUEST_TEST)' \
			&& $(MAKE) --no-print-directory e2e-boots \
			&& $(MAKE) --no-print-directory test-convert CONVERT_TESTS='--test embed'" \
		"boot=$(MAKE) --no-print-directory check-launch system-test \
			&& $(MAKE) --no-print-directory test-convert CONVERT_TESTS='--test convert' \
			CONVERT_TEST_FILTER='converts_the_esp_layout_with_dracut kernels_without_sev_snp interrupt_leaves_no_output' \
			&& $(MAKE) --no-print-directory test-sigkill test-host"

# convert and embed through libguestfs under TCG (slow: about 16 minutes
# on 2 cores): the simple and split (separate /boot, /var, /home, swap)
# layouts on the initramfs-tools guest, the ESP layout on the dracut guest,
# the refusals, Ctrl-C and embed. The split conversion is bootable (the
# agent's simulator build) and, once checked, published as test-e2e's
# guest (build/e2e-guest). The guest root filesystems and the test images are cached under
# $(BUILD_DIR); SNPGUARD_TEST_ROOTFS / SNPGUARD_TEST_ROOTFS_DRACUT =
# DIR-or-TAR skip their builds. A fixed libguestfs appliance (built once;
# GUESTFS_APPLIANCE=DIR uses another) keeps the tests off supermin's shared
# cache, which is rebuilt under running appliances whenever host packages
# change. CONVERT_TEST_FILTER selects tests (cargo test's filter and
# --skip NAME), CONVERT_TESTS the test binaries (`--test embed`).
CONVERT_TEST_FILTER ?=
CONVERT_TESTS ?= --test convert --test embed
# One vCPU per convert/embed appliance in the tests (snpguardctl's default
# is up to 4): two tests run at a time beside the other lane's guests on
# two cores, and a TCG guest with more vCPUs than it gets cores waits on
# its own descheduled vCPUs. Two conversions side by side took 443 s with
# one vCPU each against 589 s with two (docs/performance.md).
SNPGUARD_APPLIANCE_VCPUS ?= 1
test-convert: guest-rootfs agent-sim $(GUESTFS_APPLIANCE)/root
	SNPGUARD_APPLIANCE_VCPUS='$(SNPGUARD_APPLIANCE_VCPUS)' \
		SNPGUARD_AGENT=$(abspath $(AGENT_SIM_BIN)) SNPGUARD_TEST_ROOTFS='$(abspath $(SNPGUARD_TEST_ROOTFS))' \
		SNPGUARD_TEST_ROOTFS_DRACUT='$(abspath $(SNPGUARD_TEST_ROOTFS_DRACUT))' \
		LIBGUESTFS_BACKEND=direct LIBGUESTFS_PATH='$(abspath $(GUESTFS_APPLIANCE))' \
		$(CARGO) test --workspace --locked $(CONVERT_TESTS) -- --ignored \
		$(CONVERT_TEST_FILTER)

# SIGKILL under a mixed load of registrations, approvals and attestations,
# 100 kills (snpguardd/tests/integration/daemon/sigkill.rs; about two minutes).
# --workspace rather than -p snpguardd: cargo unifies the dependencies'
# features over the packages it selects, so a -p build compiles
# snpguardd's dependencies a second time (50 s) where `make unit` has
# already built this binary. test-cockpit, test-convert (95 s with
# -p snpguardctl), system-test and e2e-boots select the workspace
# likewise (the systest crate's tests are the workspace's only --ignored
# ones under --lib, --test boot, initrd and e2e).
test-sigkill:
	$(CARGO) test --workspace --locked --test integration -- --ignored sigkill

# The guests' root file systems of test-convert (build-rootfs.sh caches
# them under $(BUILD_DIR)/guest-rootfs; the boot tests take theirs from
# that cache).
guest-rootfs:
	@test -e '$(SNPGUARD_TEST_ROOTFS)' || ./tests/guest/build-rootfs.sh \
		--flavour initramfs-tools --out $(BUILD_DIR)/guest/initramfs-tools
	@test -e '$(SNPGUARD_TEST_ROOTFS_DRACUT)' || ./tests/guest/build-rootfs.sh \
		--flavour dracut --out $(BUILD_DIR)/guest/dracut

# The fixed libguestfs appliance of test-convert and test-e2e (scripts/
# demo.sh builds the same when it is missing).
$(GUESTFS_APPLIANCE)/root:
	LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg \
		libguestfs-make-fixed-appliance '$(GUESTFS_APPLIANCE)'

# End to end (tests/system/tests/e2e.rs): the Debian image with a
# separate /boot, /var, /home and swap that test-convert's split test
# converts with the agent's simulator build (about 7 minutes) and
# publishes in build/e2e-guest, then per case TCG boots from its bundle
# on a qcow2 overlay (e2e-boots): an initrd changed after registration,
# a disabled record, the guest writing its own next launch, offline
# unlock (five boots). Needs root; the guest root file system is cached
# under $(BUILD_DIR).
E2E_GUEST_TEST = converts_separate_boot_var_home_and_swap_with_an_explicit_kernel
test-e2e:
	$(MAKE) --no-print-directory test-convert CONVERT_TESTS='--test convert' \
		CONVERT_TEST_FILTER='$(E2E_GUEST_TEST) --exact'
	$(MAKE) --no-print-directory e2e-boots

# The end-to-end boots alone, from the guest test-convert published.
e2e-boots: agent-sim $(GUESTFS_APPLIANCE)/root
	$(CARGO) build --workspace --locked
	SNPGUARD_APPLIANCE_VCPUS='$(SNPGUARD_APPLIANCE_VCPUS)' \
		SNPGUARD_AGENT=$(abspath $(AGENT_SIM_BIN)) LIBGUESTFS_BACKEND=direct \
		LIBGUESTFS_PATH='$(abspath $(GUESTFS_APPLIANCE))' \
		$(CARGO) test --workspace --locked --test e2e -- --ignored --test-threads=1

install:
	$(call install-file,0755,$(TARGET_DIR)/snpguardctl,$(BINDIR)/snpguardctl)
	$(call install-file,0755,$(TARGET_DIR)/snpguardd,$(LIBEXECDIR)/snpguardd)
	$(call install-file,0644,units/snpguardd.socket,$(UNITDIR)/snpguardd.socket)
	@test -f units/snpguardd.service || { echo "install: units/snpguardd.service is missing" >&2; exit 1; }
	install -d '$(DESTDIR)$(UNITDIR)'
	sed 's|/usr/libexec/snpguard/|$(LIBEXECDIR)/|' units/snpguardd.service \
		> '$(DESTDIR)$(UNITDIR)/snpguardd.service'
	chmod 0644 '$(DESTDIR)$(UNITDIR)/snpguardd.service'
	$(call install-file,0644,sysusers.d/snpguard.conf,$(SYSUSERSDIR)/snpguard.conf)
	$(call install-file,0644,tmpfiles.d/snpguard.conf,$(TMPFILESDIR)/snpguard.conf)
	$(call install-file,0644,dbus/org.snpguard.SnpGuard1.conf,$(DBUSDIR)/system.d/org.snpguard.SnpGuard1.conf)
	@test -f dbus/org.snpguard.SnpGuard1.service || { echo "install: dbus/org.snpguard.SnpGuard1.service is missing" >&2; exit 1; }
	install -d '$(DESTDIR)$(DBUSDIR)/system-services'
	sed 's|/usr/libexec/snpguard/|$(LIBEXECDIR)/|' dbus/org.snpguard.SnpGuard1.service \
		> '$(DESTDIR)$(DBUSDIR)/system-services/org.snpguard.SnpGuard1.service'
	chmod 0644 '$(DESTDIR)$(DBUSDIR)/system-services/org.snpguard.SnpGuard1.service'
	@test -n '$(DBUS_INTERFACES)' || { echo "install: no dbus/interfaces/*.xml" >&2; exit 1; }
	install -d '$(DESTDIR)$(DBUSDIR)/interfaces'
	install -m 0644 $(DBUS_INTERFACES) '$(DESTDIR)$(DBUSDIR)/interfaces/'
	$(call install-file,0644,dbus/org.snpguard.SnpGuard1.policy,$(POLKITDIR)/org.snpguard.SnpGuard1.policy)
	$(call install-file,0644,dbus/50-org.snpguard.SnpGuard1.rules,$(POLKITRULESDIR)/50-org.snpguard.SnpGuard1.rules)
	$(call install-file,0755,initramfs-tools/hooks/snpguard,$(SHAREDIR)/initramfs-tools/hooks/snpguard)
	$(call install-file,0755,initramfs-tools/scripts/local-top/snpguard,$(SHAREDIR)/initramfs-tools/scripts/local-top/snpguard)
	$(call install-file,0755,dracut/90snpguard/module-setup.sh,$(SHAREDIR)/dracut/90snpguard/module-setup.sh)
	$(call install-file,0755,dracut/90snpguard/snpguard-unlock.sh,$(SHAREDIR)/dracut/90snpguard/snpguard-unlock.sh)
	$(call install-file,0644,dracut/90snpguard/55-snpguard-dm.rules,$(SHAREDIR)/dracut/90snpguard/55-snpguard-dm.rules)
	@! grep -qaF 'built with the SIMULATED report source' '$(AGENT_BIN)' \
		|| { echo "install: $(AGENT_BIN) is the agent's simulator build (test only); run make agent" >&2; exit 1; }
	$(call install-file,0755,$(AGENT_BIN),$(AGENTDIR)/snpguard-agent)
	$(call install-file,0755,agent/kernel-hooks/zz-snpguard-renew,$(KERNELHOOKDIR)/zz-snpguard-renew)
	@test -f cockpit/manifest.json || { echo "install: cockpit/manifest.json is missing" >&2; exit 1; }
	install -d '$(DESTDIR)$(COCKPITDIR)'
	install -m 0644 $(COCKPIT_FILES) '$(DESTDIR)$(COCKPITDIR)/'
	@test -f man/snpguardctl.1 -a -f man/snpguardd.8 -a -f man/snpguardd.toml.5 \
		|| { echo "install: manual pages are missing from man/" >&2; exit 1; }
	install -d '$(DESTDIR)$(MANDIR)/man1' '$(DESTDIR)$(MANDIR)/man5' '$(DESTDIR)$(MANDIR)/man8'
	install -m 0644 $(MAN1_PAGES) '$(DESTDIR)$(MANDIR)/man1/'
	install -m 0644 $(MAN5_PAGES) '$(DESTDIR)$(MANDIR)/man5/'
	install -m 0644 $(MAN8_PAGES) '$(DESTDIR)$(MANDIR)/man8/'
	$(call install-file,0644,completions/snpguardctl.bash,$(BASHCOMPDIR)/snpguardctl)

# The main job end to end: a Debian guest converted, registered, embedded
# and booted under QEMU/TCG with the simulated platform (scripts/demo.sh;
# DEMO_INITRD=dracut for a dracut guest).
demo: deps build agent-sim
	SNPGUARD_BUILD_DIR='$(abspath $(BUILD_DIR))' ./scripts/demo.sh

# Every cargo-fuzz target for FUZZ_SECONDS seconds each (scripts/fuzz.sh;
# nightly and cargo-fuzz are installed when missing). `make test` replays
# the seeds, the corpora and the crash reproducers on stable; see
# docs/fuzzing.md.
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=
FUZZ_TARGETS ?=
fuzz:
	CARGO='$(CARGO)' ./scripts/fuzz.sh '$(FUZZ_SECONDS)' '$(FUZZ_RUNS)' '$(FUZZ_TARGETS)'

# The Debian packages (debian/, debhelper; docs/packaging.md): snpguard
# and cockpit-snpguard from the release build, in $(DEB_DIR), which
# lintian must pass without errors. Installs debhelper and lintian when
# missing.
DEB_DIR ?= $(BUILD_DIR)/deb
deb:
	./scripts/setup-deps.sh deb
	dpkg-checkbuilddeps
	rm -rf '$(DEB_DIR)'
	mkdir -p '$(DEB_DIR)'
	debian/rules clean
	DEB_DESTDIR='$(abspath $(DEB_DIR))' debian/rules binary
	debian/rules clean
	lintian --fail-on error --info '$(DEB_DIR)'/*.deb

# The packages of the debug build `make unit` made (DEB_BUILD_OPTIONS=noopt),
# checked by tests/deb-package.sh: every installed file in exactly one
# package, the maintainer scripts, the dependencies, lintian.
test-deb:
	$(CARGO) build --workspace --locked
	DEB_BUILD_OPTIONS=noopt $(MAKE) --no-print-directory deb DEB_DIR='$(BUILD_DIR)/deb-test'
	./tests/deb-package.sh '$(BUILD_DIR)/deb-test'

# The test host's root file system (Debian 13 with systemd, dbus,
# polkitd, cockpit-ws: tests/guest/build-rootfs.sh --flavour host, cached
# under $(BUILD_DIR)/guest-rootfs); HOST_ROOTFS=DIR uses another.
HOST_ROOTFS ?= $(BUILD_DIR)/guest/host
host-rootfs:
	@test -e '$(HOST_ROOTFS)/rootfs.tar' -a '$(HOST_ROOTFS)' != '$(BUILD_DIR)/guest/host' \
		|| ./tests/guest/build-rootfs.sh --flavour host --out '$(HOST_ROOTFS)' >/dev/null

# The packages on a real host (tests/host/run.sh; about 4 minutes alone): a
# Debian 13 VM with systemd as PID 1 booted once under QEMU/TCG installs
# test-deb's packages offline and checks the service, its sandbox, D-Bus
# and socket activation, restarts, polkit for root, snpguard-admin and
# others, the journal, Cockpit in headless Chromium, the manual pages,
# completion, upgrade, remove and purge. Screenshots and the serial log
# in $(BUILD_DIR)/host-test.
test-host: test-deb host-rootfs
	./tests/host/run.sh '$(BUILD_DIR)/deb-test' '$(HOST_ROOTFS)' '$(BUILD_DIR)/host-test'

# Benchmarks; numbers go into docs/performance.md.
bench:
	$(CARGO) bench --workspace --locked

clean:
	$(CARGO) clean
	rm -rf $(BUILD_DIR)

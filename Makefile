# mvm: the two commands a fresh machine needs are `make demo` and `make test`.
# Every target installs what it needs; see README.md.

PREFIX ?= /usr/local
CARGO ?= cargo
INIT_TARGET := x86_64-unknown-linux-gnu
INIT_BIN := target/$(INIT_TARGET)/release/mvm-init
BINARIES := mvm-vmm mvm-jailer mvmd mvctl containerd-shim-mvm-v1

.PHONY: all deps kernel images init build build-release unit e2e lint test demo install bench clean fuzz fuzz-smoke

all: build

deps:
	@resources/deps.sh

kernel: deps
	@resources/kernel/build.sh >/dev/null

# Base images the end-to-end tests use (tests/tests/example.rs builds the
# example app FROM python:3-bookworm): debootstrap from Debian's mirror,
# about 2-3 minutes once, then cached under /var/cache/mvm/images. Made
# here because the emulated KVM host the tests run in has no network.
images: deps
	@resources/images/python.sh >/dev/null

# The guest init is static (it runs before any library exists in the guest).
# --target keeps crt-static off build scripts and proc macros.
init:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p mvm-init -p mvm-guest-tools --target $(INIT_TARGET)

build: init
	$(CARGO) build --workspace --exclude mvm-init --exclude mvm-e2e

build-release: init
	$(CARGO) build --release --workspace --exclude mvm-init --exclude mvm-e2e

unit:
	$(CARGO) test --workspace --exclude mvm-e2e

e2e: kernel build images
	tests/run-e2e.sh

# LINT_TARGET_DIR: a target directory for clippy alone (make test's).
LINT_TARGET_DIR ?=
lint:
	$(CARGO) fmt --all --check
	$(CARGO) fmt --manifest-path fuzz/libfuzzer/Cargo.toml --check
	$(if $(LINT_TARGET_DIR),CARGO_TARGET_DIR=$(LINT_TARGET_DIR) )$(CARGO) clippy --workspace --all-targets -- -D warnings

# Phase by phase, each timed (resources/phases.sh prints the table at the
# end): a fresh machine's make test must stay under an hour. The kernel and
# base images (uncached only on a fresh machine) build beside the workspace
# build and then lint (which needs no kernel) at nice 19, filling their
# serial stretches. The rest runs in sequence: the emulated host keeps both cores busy, so checks run beside
# the end-to-end suite only slowed it (measured; docs/architecture.md).
# Fuzzing is not part of it: the unit phase replays every fuzz target over
# its seeds and stored corpus (fuzz/tests/replay.rs); `make fuzz` fuzzes.
test:
	@resources/phases.sh deps 'build lint|images kernel' unit e2e

# libFuzzer targets for every parser of hostile input (fuzz/README.md).
# The smoke run gives each target FUZZ_SMOKE_SECONDS (an unoptimised
# build: a clean one takes a fraction of the optimised one's time); `make
# fuzz` runs each for FUZZ_SECONDS and prints a table of executions,
# coverage and corpus.
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_SECONDS ?= 300
fuzz-smoke:
	FUZZ_PROFILE=dev resources/fuzz/run.sh $(FUZZ_SMOKE_SECONDS)

fuzz:
	resources/fuzz/run.sh $(FUZZ_SECONDS)

demo: deps kernel build
	resources/demo.sh

bench: deps kernel build-release
	MVM_PROFILE_DIR=release tests/run-bench.sh

# Binaries to bin/; to lib/mvm/: the guest kernel and init (where mvmd looks
# by default), virtiofsd (the virtio-fs backend, found next to them) and the
# emulated-host scripts (machine mode). PROFILE=debug
# installs the debug build (the installed-product test suite does, so CI
# compiles the workspace once).
PROFILE ?= release
install: kernel $(if $(filter debug,$(PROFILE)),build,build-release)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/mvm/testhost
	install -m 0755 $(addprefix target/$(PROFILE)/,$(BINARIES)) $(DESTDIR)$(PREFIX)/bin/
	install -m 0755 $(INIT_BIN) $(DESTDIR)$(PREFIX)/lib/mvm/mvm-init
	install -m 0644 "$$(resources/kernel/build.sh --print-path)" $(DESTDIR)$(PREFIX)/lib/mvm/vmlinux
	install -m 0755 "$$(resources/virtiofsd/build.sh | tail -n1)" $(DESTDIR)$(PREFIX)/lib/mvm/virtiofsd
	install -m 0755 resources/testhost/run resources/testhost/init resources/testhost/build-initramfs.sh \
		resources/testhost/kvm-mode resources/testhost/machine-l1 $(DESTDIR)$(PREFIX)/lib/mvm/testhost/

clean:
	$(CARGO) clean

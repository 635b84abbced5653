# SnpGuard — top-level build. `make demo` and `make test` are the two
# commands a fresh Debian machine needs (see README.md).

CARGO ?= cargo
BUILD_DIR ?= build
SNPGUARD_TESTDATA ?= $(abspath ../shared/testdata/snp)
export SNPGUARD_TESTDATA

.PHONY: all build deps test lint unit demo bench clean

all: build

deps:
	./scripts/setup-deps.sh

build:
	$(CARGO) build --release --workspace --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

# Every test, after installing what the tests need (idempotent).
test: deps lint unit

# The main job on embedded defaults (grows with the project).
demo: deps build
	./scripts/demo.sh

# Benchmarks; numbers go into docs/performance.md.
bench:
	$(CARGO) bench --workspace --locked

clean:
	$(CARGO) clean
	rm -rf $(BUILD_DIR)

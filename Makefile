# abide: the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo
ARGS ?=

.PHONY: run test lint bench bench-quick bench-sizing build release

## Build (release) and serve on 127.0.0.1:8080 with the embedded defaults; extra flags via ARGS="--max-waiters 256".
run:
	$(CARGO) run --release --bin abide -- serve $(ARGS)

## Unit and integration tests (each starts the real server on a loopback port).
test:
	$(CARGO) test

## Formatting and clippy, warnings as errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Benchmarks: abide beside an async variant (tokio + hyper) and Nchan (when
## installed: apt-get install nginx-light libnginx-mod-nchan), five scenarios,
## and three for abide alone: publishing in memory and with --data-dir (6),
## what --auth-file and the per-client shares cost (7), and nodes sharing a
## Redis (8; when redis-server is installed).
## `bench` (about 10 minutes) writes BENCHMARKS.md and docs/bench/*.svg;
## `bench-quick` (about 2 minutes) writes target/bench-quick/. Both print the
## headline ratios at the end. Never run by `test`.
bench:
	$(CARGO) build --release --bin abide
	BENCH_MODE=full $(CARGO) run --release -p abide-compare

bench-quick:
	$(CARGO) build --release --bin abide
	BENCH_MODE=quick $(CARGO) run --release -p abide-compare

## The README's sizing table (writes target/sizing.md).
bench-sizing:
	$(CARGO) bench --bench sizing

build:
	$(CARGO) build

release:
	$(CARGO) build --release

## Raspberry Pi (README: "Running on a Raspberry Pi"). scripts/pi-toolchain.sh
## prepares the cross toolchain from Debian's packages (needs root or sudo the
## first time; quick afterwards); cross builds go to target/pi.
## `pi`: static, stripped release binaries for aarch64 and armv7, sizes printed.
## `test-pi`: the whole test suite for both targets under qemu-user, then the
## armv7 check that the server holds --max-waiters polls in a Pi's 3 GiB.
.PHONY: pi test-pi pi-toolchain
pi-toolchain:
	scripts/pi-toolchain.sh

pi:
	CARGO="$(CARGO)" scripts/pi.sh build

test-pi:
	CARGO="$(CARGO)" scripts/pi.sh test

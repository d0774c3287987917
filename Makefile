# abide: the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo
ARGS ?=

.PHONY: run test lint bench build release

## Build (release) and serve on 127.0.0.1:8080 with the embedded defaults; extra flags via ARGS="--max-waiters 256".
run:
	$(CARGO) run --release --bin abide -- serve $(ARGS)

## Unit and integration tests (each starts the real server on a loopback port).
test:
	$(CARGO) test

## Formatting and clippy, warnings as errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## Sizing benchmark: resident memory and threads with polls held (writes target/sizing.md).
bench:
	$(CARGO) bench --bench sizing

build:
	$(CARGO) build

release:
	$(CARGO) build --release

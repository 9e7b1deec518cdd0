#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (real processes,
# shared memory, sockets), doc tests, the Python interop tests, the Python
# package's tests, and the loom model checks of the lock-free ring and hold
# table (a separate build with --cfg loom). Each step says how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
step() { echo "== $1 ($((SECONDS - START)) s since the start)"; }

# The tests' virtualenv, first on PATH: the interop tests' `python3` (which
# speaks the original protocol with PyPI's msgpack) and pytest run from it.
step "python virtualenv"
# shellcheck source=python-env.sh
source scripts/python-env.sh

# Everything but the benchmarks (metabridge-peers, metabridge-bench: no
# tests of their own; clippy --all-targets builds them in CI).
step "cargo test"
cargo test --workspace --exclude metabridge-peers --exclude metabridge-bench

# The Python package (python/): built into the virtualenv, then its pytest
# suite (seed example, API, interop both ways).
step "python package"
bash scripts/test-python.sh

# Loom: the ring and its wake protocol, every interleaving within the
# preemption bound. Its own target dir, so the normal build stays cached.
step "loom"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p metabridge-shm --release --lib loom
step "all passed"

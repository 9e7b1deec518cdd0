#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (real processes,
# shared memory, sockets), doc tests, the Python interop tests, the Python
# package's tests, and the loom model checks of the lock-free ring and hold table (a
# separate build with --cfg loom).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Python interop tests speak the original protocol with PyPI's msgpack.
python3 -c 'import msgpack' 2>/dev/null || python3 -m pip install --quiet 'msgpack>=1.0'

cargo test --workspace --exclude metabridge-peers

# The Python package (python/): built into a virtualenv with the machine's
# CPython, then its pytest suite (seed example, API, interop both ways).
bash scripts/test-python.sh

# Loom: the ring and its wake protocol, every interleaving within the
# preemption bound. Its own target dir, so the normal build stays cached.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p metabridge-shm --release --lib loom

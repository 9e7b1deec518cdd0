#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (real processes,
# shared memory, sockets, TLS), doc tests, the Python interop tests, the
# Python package's tests, the mesh crate's (zenoh; then the mesh with
# Python and the CLI), and the loom model checks of the lock-free ring
# and hold table (a separate build with --cfg loom). Each step says how
# long it took.
#
# Once the tests are built, the Rust test binaries run several at a time
# (scripts/run-tests.py) while the Python package and the loom models
# build and run beside them: most tests wait on real processes and
# timeouts, not on the CPU. The Python and loom output is printed when
# they end.
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
TESTS=(--workspace --exclude metabridge-peers --exclude metabridge-bench)
step "build the tests"
cargo test "${TESTS[@]}" --no-run

LOGS=target/test-logs
mkdir -p "$LOGS"
step "run: Rust test binaries, the Python package, loom, the mesh (side by side)"
# The Python package (python/): built into the virtualenv, then its pytest
# suite (seed example, API, interop both ways).
(bash scripts/test-python.sh >"$LOGS/python.log" 2>&1; echo $? >"$LOGS/python.rc") &
PYTHON_JOB=$!
# Loom: the ring and its wake protocol, every interleaving within the
# preemption bound. Its own target dir, so the normal build stays cached.
(RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p metabridge-shm --release --lib loom >"$LOGS/loom.log" 2>&1
    echo $? >"$LOGS/loom.rc") &
LOOM_JOB=$!

# The mesh (mesh/): a workspace of its own, zenoh its dependency, tested
# in debug (a release build of zenoh costs minutes of CPU).
(cd mesh && cargo test >"../$LOGS/mesh.log" 2>&1; echo $? >"../$LOGS/mesh.rc") &
MESH_JOB=$!

rust=0
python3 scripts/run-tests.py "${TESTS[@]}" || rust=$?
wait "$PYTHON_JOB" "$LOOM_JOB" "$MESH_JOB" || true

failed=0
for part in python loom mesh; do
    rc=$(cat "$LOGS/$part.rc" 2>/dev/null || echo 1)
    echo "---- $part: $([ "$rc" = 0 ] && echo ok || echo FAILED)"
    if [ "$rc" = 0 ]; then
        grep -E '^test result:|passed|failed' "$LOGS/$part.log" | tail -3 | sed 's/^/     /'
    else
        cat "$LOGS/$part.log"
        failed=1
    fi
done
# The mesh with Python and the `metabridge` tool: needs the package the
# Python step installed and the binaries both builds made, so it runs
# last (ignored in the mesh crate's plain run for that reason).
step "run: the mesh with Python services and clients, and metabridge call --mesh"
(cd mesh && cargo test --test netns -- --ignored) || failed=1
if [ "$rust" != 0 ] || [ "$failed" != 0 ]; then
    step "FAILED"
    exit 1
fi
step "all passed"

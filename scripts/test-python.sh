#!/usr/bin/env bash
# The Python package's tests: builds python/ into a virtualenv with the
# machine's CPython (pip install ./python, maturin underneath), builds the
# Rust fixture service the interop tests call, and runs pytest.
#
#   bash scripts/test-python.sh [pytest args...]
#
# PYTHON picks the interpreter (default python3); the venv is .venv
# unless VENV says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$ROOT/.venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q maturin pytest msgpack numpy
# The package itself, as a user installs it (release build of the crate).
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps ./python
# The Rust fixture service of the interop tests (tests/fixtures/; a debug
# build: the one `cargo test` already made, when this runs after it).
cargo build -q --features test-fixtures --bin mb-fixture-test-service
export METABRIDGE_TEST_SERVICE=$CARGO_TARGET_DIR/debug/mb-fixture-test-service

# Tests import the installed package, not the source tree.
cd "$ROOT/python/tests"
"$VENV/bin/python" -m pytest . -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# The Python package's tests: builds python/ into a virtualenv with the
# machine's CPython (pip install ./python, maturin underneath), builds the
# Rust fixture service the interop tests call, and runs pytest.
#
#   bash scripts/test-python.sh [pytest args...]
#
# PYTHON picks the interpreter (default python3); the venv is .venv
# unless VENV says otherwise (scripts/python-env.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# shellcheck source=python-env.sh
source scripts/python-env.sh

# The package itself, as a user installs it, but a debug build (it shares
# what `cargo test` built; a user's `pip install` is a release build):
# maturin from the venv (no isolated build env to download again).
MATURIN_PEP517_ARGS="--profile dev" \
    "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps --no-build-isolation ./python
# The Rust fixture service of the interop tests (tests/fixtures/; a debug
# build: the one `cargo test` made, when this runs after it, else built).
export METABRIDGE_TEST_SERVICE=$CARGO_TARGET_DIR/debug/mb-fixture-test-service
if [ ! -x "$METABRIDGE_TEST_SERVICE" ]; then
    cargo build -q --features test-fixtures --bin mb-fixture-test-service
fi

# Tests import the installed package, not the source tree.
cd "$ROOT/python/tests"
"$VENV/bin/python" -m pytest . -q -p no:cacheprovider "$@"

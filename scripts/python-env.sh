# Sourced by test-all.sh and test-python.sh (from the repository's root):
# the tests' own virtualenv, made with the machine's CPython, with what
# the tests import, first on PATH, so that every `python3` the tests run
# (the Rust interop tests too) is this one and nothing is installed into
# the system's Python.
#
# PYTHON picks the interpreter (default python3); the venv is .venv unless
# VENV says otherwise.
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$PWD/.venv}
# What the tests need: maturin builds the package, pytest runs its tests,
# msgpack speaks the original protocol in the interop tests, numpy is the
# buffers' test data.
TEST_REQUIREMENTS="maturin>=1.5,<2 pytest msgpack>=1.0 numpy"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# Installed once per list of requirements (pip asks the index every time).
if [ "$(cat "$VENV/.metabridge-test-requirements" 2>/dev/null)" != "$TEST_REQUIREMENTS" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    # shellcheck disable=SC2086 # one word per requirement
    "$VENV/bin/python" -m pip install -q $TEST_REQUIREMENTS
    echo "$TEST_REQUIREMENTS" >"$VENV/.metabridge-test-requirements"
fi
export VENV
export PATH="$VENV/bin:$PATH"

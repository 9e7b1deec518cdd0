import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import metabridge as meta  # noqa: E402
import services  # noqa: E402,F401  (defines the services before any fork)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(autouse=True)
def home(monkeypatch):
    """Each test: its own 0700 METABRIDGE_HOME; every daemon it started is
    stopped at the end."""
    d = tempfile.mkdtemp(prefix="mb-pytest-")
    os.chmod(d, 0o700)
    monkeypatch.setenv("METABRIDGE_HOME", d)
    monkeypatch.delenv("METABRIDGE_TRANSPORT", raising=False)
    yield d
    meta._stop_all()
    shutil.rmtree(d, ignore_errors=True)


def rust_service_binary():
    """The Rust fixture service (tests/fixtures/test_service.rs, the binary
    mb-fixture-test-service), built by scripts/test-python.sh."""
    given = os.environ.get("METABRIDGE_TEST_SERVICE")
    if given:
        return given
    for profile in ("release", "debug"):
        p = os.path.join(ROOT, "target", profile, "mb-fixture-test-service")
        if os.access(p, os.X_OK):
            return p
    pytest.fail("the fixture service is not built: "
                "cargo build --features test-fixtures --bin mb-fixture-test-service")

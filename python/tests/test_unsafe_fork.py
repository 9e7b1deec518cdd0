"""``meta.run()`` with other threads running refuses to fork.

Its daemon is an ``os.fork()`` of the caller, which copies every lock
another thread holds at that moment, held, into a child where that thread
does not exist. A service whose endpoint takes such a lock then never
answers: every call ends in CallTimeout (3 of 3 runs did before ``run``
checked). Each scenario runs in a fresh interpreter under a hard timeout,
so that a regression is a failed test, never a hung one; a daemon it
forked anyway dies with that interpreter (its parent watch), and the test
checks that no process of its home is left.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from test_processes import processes_with_home, wait_until

# A service whose endpoint takes a module-level lock, and a thread that
# holds that lock while the main thread calls run(): the forked daemon
# would get the lock held forever. Prints one JSON line: what happened.
SCENARIO = """
import json, os, sys, threading, time
import metabridge as meta

lock = threading.Lock()

@meta.create("held-lock").daemon()
class HeldLock:
    @meta.function
    def locked(self):
        with lock:
            return "served"

holding, release, ended = threading.Event(), threading.Event(), threading.Event()

def holder():
    with lock:
        holding.set()
        release.wait(60)
    ended.set()

STARTER = %(starter)r
if STARTER == "threading":
    threading.Thread(target=holder, name="lock-holder", daemon=True).start()
else:  # not registered in threading: invisible to threading.active_count()
    import _thread
    _thread.start_new_thread(holder, ())
assert holding.wait(10)

def attempt():
    t0 = time.monotonic()
    try:
        h = meta.run("held-lock", startup_timeout=10)
    except meta.MetaBridgeError as e:
        return {"outcome": "refused", "seconds": time.monotonic() - t0,
                "type": type(e).__name__, "runtime_error": isinstance(e, RuntimeError),
                "message": str(e)}
    try:
        with meta.connect("held-lock", timeout=3) as c:
            return {"outcome": "forked", "reply": c.locked()}
    except meta.CallTimeout as e:
        return {"outcome": "forked", "reply": "CallTimeout: %%s" %% e}
    finally:
        h.stop()

report = {"first": attempt()}
# The thread ends (and its lock is free): run() then forks and serves.
release.set()
assert ended.wait(10)
deadline = time.monotonic() + 10
while time.monotonic() < deadline and len(sys._current_frames()) > 1:
    time.sleep(0.01)  # until the ended thread is gone from the interpreter
report["after"] = attempt()
print(json.dumps(report), flush=True)
"""


def scenario(home, code, timeout=60):
    """Runs ``code`` in a fresh interpreter under ``timeout`` seconds; its
    last stdout line as JSON. Fails (never hangs) when it does not end."""
    env = dict(os.environ, METABRIDGE_HOME=home)
    try:
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                             capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the scenario hung for {timeout} s: {e.stderr!r}")
    finally:
        # A daemon forked anyway dies with its parent; nothing may be left.
        assert wait_until(lambda: processes_with_home(home) == []), processes_with_home(home)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("starter", ["threading", "_thread"])
def test_run_with_a_thread_holding_a_lock_is_a_clear_error_not_a_deadlock(home, starter):
    report = scenario(home, SCENARIO % {"starter": starter})
    first = report["first"]
    assert first["outcome"] == "refused", f"run() forked with a lock held: {first}"
    assert first["type"] == "UnsafeFork" and first["runtime_error"], first
    assert first["seconds"] < 1.0, first  # a check, not a wait for a timeout
    message = first["message"]
    # What happened and what to do about it.
    assert "'held-lock'" in message and "1 other thread(s)" in message, message
    assert "call meta.run() before starting threads" in message.lower(), message
    assert "metabridge.run('held-lock', wait=True)" in message, message
    if starter == "threading":
        assert "lock-holder" in message, message
    else:
        assert "not started by threading" in message, message
    # Not a lasting refusal: once the thread is gone, run() forks and serves.
    assert report["after"] == {"outcome": "forked", "reply": "served"}, report


def test_threads_that_run_no_python_do_not_refuse_run(home):
    # As numpy's OpenBLAS pool (started by `import numpy`, which a program
    # may well do before run()): a native thread that never runs Python
    # holds none of its locks. Here one made by pthread_create, sleeping.
    report = scenario(home, """
        import ctypes, json, os
        import metabridge as meta

        @meta.create("native-neighbour").daemon()
        class Neighbour:
            @meta.function
            def ping(self):
                return "pong"

        libc = ctypes.CDLL(None, use_errno=True)
        start = ctypes.cast(libc.sleep, ctypes.c_void_p)  # sleep(60) as the thread's body
        tid = ctypes.c_ulong()
        assert libc.pthread_create(ctypes.byref(tid), None, start, ctypes.c_void_p(60)) == 0
        tasks = len(os.listdir("/proc/self/task"))
        h = meta.run("native-neighbour")
        with meta.connect("native-neighbour") as c:
            reply = c.ping()
        h.stop()
        print(json.dumps({"tasks": tasks, "reply": reply}), flush=True)
        """)
    assert report["tasks"] == 2, report  # the premise: a second, native thread
    assert report["reply"] == "pong", report

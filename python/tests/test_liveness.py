"""A call made on the main thread notices a service killed under it.

The main thread's calls wait in short slices so that a signal (Ctrl+C)
can interrupt them. Each slice used to end at its own deadline before the
check that the service still lives came due, so a SIGKILL of the service
mid-call was only noticed at the call's timeout (CallTimeout after the
full 15 s, where another thread got ServiceGone within 0.5 s). Now every
wait checks the service once a liveness interval has passed since the
last check, whatever its slices.
"""

import os
import signal
import threading
import time

import pytest

import metabridge as meta


def _kill_soon(pid):
    """SIGKILLs ``pid`` from another thread in 0.3 s (mid-call, or, on a slow
    machine, before the call: it must fail as clearly then too); returns the
    thread and a dict that gets the time of the kill."""
    out = {}

    def run():
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        out["at"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_a_main_thread_call_notices_a_service_killed_mid_call(home, monkeypatch, transport):
    assert threading.current_thread() is threading.main_thread()
    monkeypatch.setenv("METABRIDGE_TRANSPORT", transport)
    h = meta.run("forms")
    # The call's own timeout is far away: only noticing the death ends it.
    c = meta.connect("forms", timeout=60)
    assert c._transport == transport
    assert c.plain(1) == 1
    killer, killed = _kill_soon(h.pid)
    t0 = time.monotonic()
    with pytest.raises(meta.MetaBridgeError) as raised:
        c.sleep(45)
    returned = time.monotonic()
    killer.join(30)
    print(f"{transport}: {type(raised.value).__name__} "
          f"{(returned - killed.get('at', t0)) * 1000:.0f} ms after SIGKILL: {raised.value}")
    assert not isinstance(raised.value, meta.CallTimeout), raised.value
    if transport == "shm":
        assert isinstance(raised.value, meta.ServiceGone), raised.value
    h.join(5)
    assert not h.is_running()

"""A client made before ``os.fork()`` (gunicorn ``--preload``,
``multiprocessing`` with ``fork``): each process gets its own replies, and
the children leave the parent's channels and sockets alone."""

import json
import os
import threading
import time

import pytest

import metabridge as meta

CHILDREN = 4
CALLS = 3000
BUDGET = 60.0  # seconds per process: bounds a hang, asserts no timing


def hammer(client, tag, calls):
    """``calls`` echo calls of values unique to this process; what came back."""
    t = {"pid": os.getpid(), "tag": tag, "calls": 0, "wrong": 0, "errors": 0,
         "first_wrong": None, "first_error": None}
    start = time.monotonic()
    for i in range(calls):
        if time.monotonic() - start > BUDGET:
            break
        mine = [tag, os.getpid(), i]
        t["calls"] += 1
        try:
            got = client.echo(mine)
        except meta.MetaBridgeError as e:
            t["errors"] += 1
            t["first_error"] = t["first_error"] or repr(e)
            continue
        if got != mine:
            t["wrong"] += 1
            t["first_wrong"] = t["first_wrong"] or f"sent {mine}, got {got}"
    return t


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_fork_parent_and_four_children_each_get_their_own_replies(home, monkeypatch, transport):
    monkeypatch.setenv("METABRIDGE_TRANSPORT", transport)
    meta.run("forms")
    c = meta.connect("forms", timeout=5)
    assert c._transport == transport
    # Calls from a few threads at once, so that the pool holds several
    # channels (or sockets) at the fork.
    warm = []
    threads = [threading.Thread(target=lambda k=k: warm.append(hammer(c, f"warm{k}", 200)))
               for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(w["wrong"] == 0 and w["errors"] == 0 for w in warm), warm
    # run() forks too, now with a client open and the fork hook set: its
    # daemon starts and serves.
    meta.run("interop-fixture")
    with meta.connect("interop-fixture", "p:", 1) as other:
        assert other.echo("x") == "p:x"

    report_r, report_w = os.pipe()
    gate_r, gate_w = os.pipe()
    pids = []
    for k in range(CHILDREN):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(gate_w)
                os.close(report_r)
                os.read(gate_r, 1)  # until every child exists: all at once
                t = hammer(c, f"child{k}", CALLS)
                c.close()  # closes the child's channels, not the parent's
                os.write(report_w, (json.dumps(t) + "\n").encode())
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(gate_w)
    os.close(gate_r)
    mine = hammer(c, "parent", CALLS)
    os.close(report_w)
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    with os.fdopen(report_r) as f:
        reports = [json.loads(line) for line in f]
    # The children are gone (and closed their clients): the parent's client
    # still works, on the channels it had.
    after = hammer(c, "after", 1000)

    everyone = [mine] + reports
    wrong = sum(t["wrong"] for t in everyone)
    errors = sum(t["errors"] for t in everyone)
    summary = (f"{transport}: wrong={wrong} errors={errors} after_wrong={after['wrong']} "
               f"after_errors={after['errors']} reports={len(reports)}/{CHILDREN}\n"
               + "\n".join(json.dumps(t) for t in everyone + [after]))
    print(summary)
    assert statuses == [0] * CHILDREN, summary
    assert len(reports) == CHILDREN, summary
    assert all(t["calls"] == CALLS for t in everyone), summary
    assert (wrong, errors) == (0, 0), summary
    assert (after["calls"], after["wrong"], after["errors"]) == (1000, 0, 0), summary

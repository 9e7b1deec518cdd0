"""The original's API on the Rust runtime: decorators, methods, arguments,
errors, values, threads."""

import os
import signal
import socket
import struct
import threading

import msgpack
import pytest

import metabridge as meta


@pytest.fixture
def forms():
    handle = meta.run("forms")
    yield handle
    handle.stop()


def test_run_returns_a_ready_handle(forms):
    assert forms.service == "forms"
    assert forms.pid > 0 and forms.is_running()
    with meta.connect("forms") as c:
        assert c.who()["pid"] == forms.pid
        assert c._transport == "shm"
    forms.stop()
    assert not forms.is_running()


def test_every_decorator_form(forms):
    with meta.connect("forms") as c:
        names = c._endpoints()
        for n in ["plain", "bare", "named", "by_position", "kw_named", "by_keyword",
                  "dynamic_name", "dyn", "static_inner", "static_outer", "static_below",
                  "klass", "later"]:
            assert n in names, n
        assert "not_exposed" not in names and "__init__" not in names
        assert names == sorted(names)
        assert c.bare() == "bare"
        assert c.named() == c.by_position() == "named"
        assert c.kw_named() == c.by_keyword() == "kw_named"
        assert c.dynamic_name() == c.dyn() == "dynamic"


def test_instance_static_class_and_async_methods(forms):
    with meta.connect("forms", 10) as c:
        assert c.plain(5) == 15
        assert c.static_inner(3) == 6 and c.static_inner(3, b=4) == 12
        assert c.static_outer(7) == c.static_below(7) == -7
        assert c.klass("!") == "Forms!"
        assert c.later(10, 20) == "A soma é: 30"
        assert c.later(a=1, b=2) == "A soma é: 3"


def test_constructor_arguments_positional_and_keyword_and_the_instance_lru(forms):
    a = meta.connect("forms", 1, label="x")
    b = meta.connect("forms", base=1, label="x")
    same = meta.connect("forms", 1, label="x")
    other = meta.connect("forms", 2)
    wa, wb, ws, wo = a.who(), b.who(), same.who(), other.who()
    assert (wa["base"], wa["label"]) == (1, "x") == (wb["base"], wb["label"])
    assert (wo["base"], wo["label"]) == (2, "none")
    # One instance per distinct constructor arguments (as sent).
    assert wa["id"] == ws["id"] == a.who()["id"]
    assert wo["id"] != wa["id"]
    for c in (a, b, same, other):
        c.close()


def test_errors(forms):
    assert issubclass(meta.ServiceNotFound, meta.MetaBridgeError)
    assert issubclass(meta.ServiceAlreadyExists, meta.MetaBridgeError)
    assert issubclass(meta.RemoteExecutionError, meta.MetaBridgeError)
    with pytest.raises(meta.ServiceNotFound):
        meta.connect("no-such-service")
    with pytest.raises(meta.ServiceNotFound):
        meta.run("never-defined")
    with pytest.raises(meta.ServiceAlreadyExists):
        meta.run("forms")
    assert forms.is_running()
    with meta.connect("forms") as c:
        with pytest.raises(meta.RemoteExecutionError) as e:
            c.fails("bad value")
        assert e.value.type == "ValueError" and e.value.message == "bad value"
        assert str(e.value) == "ValueError: bad value"
        with pytest.raises(meta.RemoteExecutionError) as e:
            c.async_fails()
        assert e.value.type == "KeyError"
        with pytest.raises(meta.RemoteExecutionError) as e:
            c.nope()
        assert (e.value.type, e.value.message) == ("NotFound", "Endpoint 'nope' not found")
        with pytest.raises(meta.RemoteExecutionError) as e:
            c.plain()
        assert e.value.type == "TypeError" and "missing" in e.value.message
        with pytest.raises(meta.RemoteExecutionError) as e:
            c.plain(1, 2, 3)
        assert e.value.type == "TypeError"
        with pytest.raises(meta.RemoteExecutionError) as e:
            c.unserializable()
        assert e.value.type == "TypeError" and "serialize" in e.value.message
        with pytest.raises(TypeError):
            c.echo(object())  # not sent at all
        assert c.echo("still serving") == "still serving"


def test_an_exception_in_init_reaches_the_client():
    h = meta.run("ctor-fails")
    with meta.connect("ctor-fails", True) as c:
        with pytest.raises(meta.RemoteExecutionError) as e:
            c.ping()
        assert (e.value.type, e.value.message) == ("RuntimeError", "no instance today")
    with meta.connect("ctor-fails", fail=False) as c:
        assert c.ping() == "pong"
    h.stop()


def test_an_exception_in_a_no_argument_init_is_a_startup_error(home):
    with pytest.raises(meta.MetaBridgeError) as e:
        meta.run("startup-fails")
    assert "RuntimeError in StartupFails.__init__: cannot start" in str(e.value)
    with pytest.raises(meta.ServiceNotFound):
        meta.connect("startup-fails")


def test_startup_timeout_bounds_the_wait_for_readiness(home):
    # The daemon never becomes ready: run() gives up at startup_timeout,
    # kills it, and says so (the original's startup_timeout parameter).
    with pytest.raises(meta.MetaBridgeError) as e:
        meta.run("startup-hangs", startup_timeout=0.5)
    assert "did not report" in str(e.value) or "timed out" in str(e.value).lower(), str(e.value)
    with pytest.raises(meta.ServiceNotFound):
        meta.connect("startup-hangs")


VALUES = [
    None, True, False, 0, 1, -1, 127, 128, -33, 255, 65536, -(2**31), 2**63 - 1, 2**64 - 1,
    -(2**63), 0.5, -1e300, "", "olá", "x" * 300, b"", b"\x00\xff" * 100,
    [], [1, [2, [3]]], {"a": 1, "b": [True, None]}, {1: "int key"}, {"nested": {"x": b"y"}},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_map_as_the_original_maps_them(value):
    packed = meta._native.packb(value)
    assert packed == msgpack.packb(value, use_bin_type=True)
    assert meta._native.unpackb(packed) == msgpack.unpackb(packed, raw=False, strict_map_key=False)


def test_values_round_trip_through_a_service(forms):
    with meta.connect("forms") as c:
        for v in VALUES:
            assert c.echo(v) == v
        assert c.echo((1, "tuple")) == [1, "tuple"]  # tuples arrive as lists
        with pytest.raises(OverflowError):
            c.echo(2**64)


def test_large_bytes_50_mb(forms):
    data = bytes(range(256)) * (50 * 1024 * 1024 // 256)
    with meta.connect("forms", timeout=120) as c:
        back = c.echo(data)
        assert c._transport == "shm"
    assert len(back) == len(data) and back == data


def test_sixteen_threads_share_one_client(forms):
    errors = []
    with meta.connect("forms", 1000) as c:

        def work(t):
            try:
                for i in range(200):
                    assert c.plain(t * 1000 + i) == 1000 + t * 1000 + i
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_the_gil_is_released_while_a_call_waits(forms):
    """A call blocked for 0.5 s must not stop another Python thread."""
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.01)

    with meta.connect("forms") as c:
        t = threading.Thread(target=ticker)
        t.start()
        c.sleep(0.5)
        stop.set()
        t.join()
    assert len(ticks) > 5


def test_forced_tcp(forms, monkeypatch):
    monkeypatch.setenv("METABRIDGE_TRANSPORT", "tcp")
    with meta.connect("forms", 3) as c:
        assert c._transport == "tcp"
        assert c.plain(4) == 7
        assert c.later(1, 1) == "A soma é: 2"
        data = b"\x01" * (5 * 1024 * 1024)
        assert c.echo(data) == data
        with pytest.raises(meta.RemoteExecutionError):
            c.fails("over tcp")


@pytest.mark.parametrize("bad", ["pay\u202eknl.exe", "demo\u200b-service", "\ufeffdemo",
                                 "demo\u00a0service", "a/b", "..", " padded", "x" * 65])
def test_create_refuses_names_that_are_invalid_or_look_like_another(bad):
    # The runtime's rule (the same as the Rust API's and the macro's),
    # before any class is decorated or daemon started.
    with pytest.raises(ValueError, match="invalid service name") as e:
        meta.create(bad)
    if not bad.isascii():
        assert "U+" in str(e.value), e.value
    meta.create("serviço de teste")  # visible, inner spaces: fine


def test_endpoints_returns_the_list_fetched_at_connect_as_the_original(forms):
    with meta.connect("forms") as c:
        names = c.endpoints()
        # The original: sorted names, aliases included, a fresh list each time.
        assert names == sorted(names)
        assert {"plain", "bare", "named", "by_position", "kw_named", "dynamic_name", "dyn"} <= set(names)
        assert names == c._endpoints()
        names.append("mutated")
        assert "mutated" not in c.endpoints()


def _original_list_endpoints(address):
    """What the original's ``ServiceClient`` does at connect
    (``_fetch_endpoints``): ``{"type": "list_endpoints"}`` in its TCP
    protocol, then ``list(response["result"])``."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        body = msgpack.packb({"type": "list_endpoints"}, use_bin_type=True)
        s.sendall(struct.pack("!I", len(body)) + body)

        def recv(n):
            data = b""
            while len(data) < n:
                chunk = s.recv(n - len(data))
                assert chunk, "the service closed the connection"
                data += chunk
            return data

        (n,) = struct.unpack("!I", recv(4))
        response = msgpack.unpackb(recv(n), raw=False)
    assert response["status"] == "ok", response
    return list(response["result"])


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_endpoints_is_what_the_originals_client_fetched_at_connect(home, monkeypatch, transport):
    h = meta.run("interop-fixture")
    try:
        expected = _original_list_endpoints(h.tcp_address)
        monkeypatch.setenv("METABRIDGE_TRANSPORT", transport)
        c = meta.connect("interop-fixture", "p:", 1)
        assert c._transport == transport
        names = c.endpoints()
        # The original's type and order: a list of str, as the service
        # listed them (sorted), an alias beside its method's name.
        assert type(names) is list and all(type(n) is str for n in names)
        assert names == expected
        assert names == sorted(names) and {"renamed", "original", "echo"} <= set(names)
        names.append("mutated")  # a fresh list each time, as the original's
        assert c.endpoints() == expected
        # Fetched at connect, as the original's: no call is made now.
        h.stop()
        assert c.endpoints() == expected
        with pytest.raises(meta.MetaBridgeError):
            c._endpoints()  # asks the (stopped) service
        c.close()
    finally:
        h.stop()


def test_the_endpoints_method_wins_over_an_endpoint_named_endpoints(home):
    h = meta.run("shadowed")
    try:
        with meta.connect("shadowed") as c:
            assert c.endpoints() == ["alias_of_other", "endpoints", "other"]
            assert c._call("endpoints") == "the remote endpoints()"
            assert c.alias_of_other() == c.other() == "other"
    finally:
        h.stop()


def test_gc_returns_what_it_removed_and_kept(forms):
    report = meta.gc()
    assert set(report) == {"removed", "kept"}
    assert all(isinstance(line, str) for line in report["removed"] + report["kept"])
    # The live service is kept, never removed.
    assert any(f"pid {forms.pid}" in line and "forms" in line for line in report["kept"]), report
    assert not any(str(forms.pid) in line for line in report["removed"]), report


def test_gc_removes_what_a_killed_daemon_left(home):
    h = meta.run("forms")
    os.kill(h.pid, signal.SIGKILL)  # no cleanup: its entry and socket stay
    h.join(10)  # reaps it: a zombie would still count as alive
    assert not h.is_running()
    report = meta.gc()
    gone = [line for line in report["removed"] if f"dead process {h.pid}" in line]
    # Its registry entry and its control socket.
    assert any("registry entry" in line and "forms" in line for line in gone), report
    assert any(line.endswith(".sock of dead process %d" % h.pid) for line in gone), report
    assert not any(str(h.pid) in line for line in report["kept"]), report
    assert meta.gc() == {"removed": [], "kept": []}

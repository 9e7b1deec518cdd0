"""TLS from Python: a service created with ``tls=`` serves TLS only on its
TCP port; a client with ``tls={"pin": ...}`` or ``{"ca": ...}`` reaches it
by address; a wrong pin is refused with the cause named; the original
protocol's plaintext client is told the port speaks TLS only.
Certificates are made with the ``openssl`` command."""

import atexit
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import tempfile

import msgpack
import pytest

import metabridge as meta

_DIR = tempfile.mkdtemp(prefix="mb-pytest-tls-")
atexit.register(shutil.rmtree, _DIR, True)
CERT = os.path.join(_DIR, "cert.pem")
KEY = os.path.join(_DIR, "key.pem")
subprocess.run(
    ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
     "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
     "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
     "-keyout", KEY, "-out", CERT],
    check=True, capture_output=True,
)
os.chmod(KEY, 0o600)
_der = subprocess.run(["openssl", "x509", "-in", CERT, "-outform", "der"],
                      check=True, capture_output=True).stdout
PIN = "sha256:" + hashlib.sha256(_der).hexdigest()


@meta.create("tls-py", host="127.0.0.1", tls={"cert": CERT, "key": KEY}).daemon()
class Secure:
    @meta.function
    def echo(self, text):
        return text


def test_a_pinned_client_calls_a_tls_service_by_address():
    handle = meta.run("tls-py")
    with meta.connect("tls-py", address=handle.tcp_address, tls={"pin": PIN}) as c:
        assert c.echo("over TLS") == "over TLS"
    # A self-signed certificate is its own CA, which cannot also be the
    # service's (rustls: CaUsedAsEndEntity): CA trust is tested in Rust
    # (net-tests) with a CA and a certificate it signed.
    with pytest.raises(meta.MetaBridgeError, match="CaUsedAsEndEntity"):
        meta.connect("tls-py", address=handle.tcp_address, tls={"ca": CERT})


def test_a_wrong_pin_is_refused_naming_the_cause():
    handle = meta.run("tls-py")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(meta.MetaBridgeError, match="not the pinned"):
        meta.connect("tls-py", address=handle.tcp_address, tls={"pin": wrong})
    with pytest.raises(meta.MetaBridgeError, match="exactly one of"):
        meta.connect("tls-py", address=handle.tcp_address, tls={"ca": CERT, "pin": PIN})


def test_the_original_plaintext_client_is_told_the_port_speaks_tls_only():
    handle = meta.run("tls-py")
    host, port = handle.tcp_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        body = msgpack.packb({"endpoint": "echo", "args": ["x"], "kwargs": {},
                              "init_args": [], "init_kwargs": {}})
        s.sendall(struct.pack(">I", len(body)) + body)
        head = s.recv(4, socket.MSG_WAITALL)
        (n,) = struct.unpack(">I", head)
        reply = msgpack.unpackb(s.recv(n, socket.MSG_WAITALL))
    assert reply["status"] == "error"
    assert reply["error"]["type"] == "ProtocolError"
    assert "speaks TLS only" in reply["error"]["message"]

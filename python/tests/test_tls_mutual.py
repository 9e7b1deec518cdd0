"""Mutual TLS from Python in place of a token: a service created with
``tls={"cert", "key", "client_ca", "allow"}`` admits the clients of its
allow-list (a name their certificate is valid for) and refuses another
client of the same CA, naming the cause. Certificates are made with the
``openssl`` command: a CA for the clients, two client certificates it
signs, and the service's own."""

import atexit
import os
import shutil
import subprocess
import tempfile

import pytest

import metabridge as meta

_DIR = tempfile.mkdtemp(prefix="mb-pytest-mtls-")
atexit.register(shutil.rmtree, _DIR, True)


def _path(name):
    return os.path.join(_DIR, name)


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _self_signed(stem, cn, san):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "2", "-subj", f"/CN={cn}", "-addext", f"subjectAltName={san}",
             "-keyout", _path(f"{stem}.key"), "-out", _path(f"{stem}.pem"))
    os.chmod(_path(f"{stem}.key"), 0o600)


def _client(stem, name):
    """A client certificate for DNS name ``name``, signed by the clients' CA."""
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN={name}", "-keyout", _path(f"{stem}.key"), "-out", _path(f"{stem}.csr"))
    with open(_path(f"{stem}.ext"), "w") as f:
        f.write(f"subjectAltName=DNS:{name}\nextendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", _path(f"{stem}.csr"), "-CA", _path("ca.pem"),
             "-CAkey", _path("ca.key"), "-CAcreateserial", "-days", "2",
             "-extfile", _path(f"{stem}.ext"), "-out", _path(f"{stem}.pem"))
    os.chmod(_path(f"{stem}.key"), 0o600)


_self_signed("service", "127.0.0.1", "IP:127.0.0.1")
_self_signed("ca", "clients CA", "DNS:clients-ca.example")
_client("reports", "reports.example")
_client("intruder", "intruder.example")

with open(_path("service.pem"), "rb") as f:
    _SERVICE_CERT = f.read()


@meta.create("mtls-py", host="127.0.0.1",
             tls={"cert": _path("service.pem"), "key": _path("service.key"),
                  "client_ca": _path("ca.pem"), "allow": ["reports.example"]}).daemon()
class Guarded:
    @meta.function
    def echo(self, text):
        return text


def _pin():
    import hashlib
    der = subprocess.run(["openssl", "x509", "-in", _path("service.pem"), "-outform", "der"],
                         check=True, capture_output=True).stdout
    return "sha256:" + hashlib.sha256(der).hexdigest()


def test_mutual_tls_admits_the_allowed_client_and_refuses_another():
    handle = meta.run("mtls-py")
    pin = _pin()
    allowed = {"pin": pin, "cert": _path("reports.pem"), "key": _path("reports.key")}
    with meta.connect("mtls-py", address=handle.tcp_address, tls=allowed) as c:
        assert c.echo("admitted") == "admitted"
    intruder = {"pin": pin, "cert": _path("intruder.pem"), "key": _path("intruder.key")}
    with pytest.raises(meta.MetaBridgeError, match="refused this client's certificate"):
        with meta.connect("mtls-py", address=handle.tcp_address, tls=intruder) as c:
            c.echo("let me in")


def test_an_allow_list_must_be_a_list_of_strings():
    with pytest.raises(TypeError, match="list of strings"):
        meta.create("mtls-bad", host="127.0.0.1",
                    tls={"cert": "c.pem", "key": "k.pem", "allow": "reports.example"})

"""A client of the original MetaBridge protocol, written from the protocol
document with PyPI's msgpack, calling a Rust MetaBridge service.

usage: interop_client.py HOST:PORT [TOKEN]
Exits 0 when every check passed; prints the failed check otherwise.
"""
import socket
import struct
import sys

import msgpack


def frame(sock, obj):
    body = msgpack.packb(obj)
    sock.sendall(struct.pack(">I", len(body)) + body)
    return read(sock)


def read(sock):
    head = recv_exact(sock, 4)
    (n,) = struct.unpack(">I", head)
    return msgpack.unpackb(recv_exact(sock, n), raw=False)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    token = sys.argv[2] if len(sys.argv) > 2 else None
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(endpoint, args=(), kwargs=None, ctor_args=("py:", 3), ctor_kwargs=None):
        req = {"type": "call", "endpoint": endpoint, "args": list(args), "kwargs": kwargs or {},
               "ctor_args": list(ctor_args), "ctor_kwargs": ctor_kwargs or {}}
        if token is not None:
            req["auth"] = token
        return frame(sock, req)

    def check(name, got, want):
        if got != want:
            print(f"FAILED {name}: got {got!r}, want {want!r}")
            sys.exit(1)

    check("positional", call("echo", ["olá"]), {"status": "ok", "result": "py:olá"})
    check("keyword", call("echo", kwargs={"text": "kw"}), {"status": "ok", "result": "py:kw"})
    check("ctor kwargs", call("scaled", [2], ctor_args=[], ctor_kwargs={"prefix": "x", "scale": 5}),
          {"status": "ok", "result": 10})
    check("alias", call("original"), {"status": "ok", "result": "renamed and original"})
    check("async", call("later", [1]), {"status": "ok", "result": "py:after 1 ms"})
    check("bytes", call("blob", [b"\x00\x01\x02"]), {"status": "ok", "result": 3})
    lst = {"type": "list_endpoints"}
    if token is not None:
        lst["auth"] = token
    listed = frame(sock, lst)
    check("list status", listed["status"], "ok")
    check("list sorted", listed["result"], sorted(listed["result"]))
    check("list has echo", "echo" in listed["result"], True)
    check("not found", call("nope"),
          {"status": "error", "error": {"type": "NotFound", "message": "Endpoint 'nope' not found"}})
    r = call("scaled", ["x"])
    check("type error", (r["status"], r["error"]["type"]), ("error", "TypeError"))
    r = call("boom")
    check("panic", (r["status"], r["error"]["type"]), ("error", "Panic"))
    r = call("check", [-1])
    check("endpoint error", r["error"], {"type": "Refused", "message": "refused: -1 is negative"})
    r = frame(sock, {"type": "dance"})
    check("unknown type", r["error"], {"type": "ProtocolError", "message": "Unknown command"})
    # The connection survives every error above.
    check("still serving", call("echo", ["fim"]), {"status": "ok", "result": "py:fim"})
    print("OK")


if __name__ == "__main__":
    main()

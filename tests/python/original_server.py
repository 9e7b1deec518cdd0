"""A small server of the original MetaBridge protocol, written from the
protocol document (not from the original's code): the seed's demo-service,
so that the Rust client can be tested against the original wire format.

Prints "PORT <n>" on its first line, then serves until killed.
"""
import asyncio
import socket
import socketserver
import struct
import sys
import threading
from collections import OrderedDict

import msgpack


class Service:
    def __init__(self, argumento):
        self.argumento = argumento

    def home(self):
        return "Mensagem da home do serviço!"

    def get(self, outro_argumento):
        return f"{self.argumento} {outro_argumento}"

    async def soma(self, a, b):
        await asyncio.sleep(0.01)
        return f"A soma é: {a + b}"

    def fail(self):
        raise ValueError("falhou de propósito")


ENDPOINTS = {"teste": "home", "home": "home", "get": "get", "soma": "soma", "fail": "fail"}
CACHE = OrderedDict()
LOCK = threading.Lock()


def instance(ctor_args, ctor_kwargs):
    key = msgpack.packb([ctor_args, sorted(ctor_kwargs.items())])
    with LOCK:
        if key in CACHE:
            CACHE.move_to_end(key)
            return CACHE[key]
    obj = Service(*ctor_args, **ctor_kwargs)
    with LOCK:
        CACHE[key] = obj
        while len(CACHE) > 128:
            CACHE.popitem(last=False)
    return obj


def handle(req):
    if not isinstance(req, dict):
        return {"status": "error", "error": {"type": "ProtocolError", "message": "Unknown command"}}
    kind = req.get("type")
    if kind == "list_endpoints":
        return {"status": "ok", "result": sorted(ENDPOINTS)}
    if kind != "call":
        return {"status": "error", "error": {"type": "ProtocolError", "message": "Unknown command"}}
    name = req.get("endpoint")
    if name not in ENDPOINTS:
        return {"status": "error", "error": {"type": "NotFound", "message": f"Endpoint '{name}' not found"}}
    try:
        obj = instance(req.get("ctor_args", []), req.get("ctor_kwargs", {}))
        result = getattr(obj, ENDPOINTS[name])(*req.get("args", []), **req.get("kwargs", {}))
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return {"status": "ok", "result": result}
    except Exception as e:  # the original sends the class name and text
        return {"status": "error", "error": {"type": type(e).__name__, "message": str(e)}}


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            head = self.exact(4)
            if head is None:
                return
            (n,) = struct.unpack(">I", head)
            body = self.exact(n)
            if body is None:
                return
            resp = msgpack.packb(handle(msgpack.unpackb(body, raw=False)))
            sock.sendall(struct.pack(">I", len(resp)) + resp)

    def exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.request.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    server = Server(("127.0.0.1", 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    sys.stdout.close()
    server.serve_forever()

#!/usr/bin/env python3
"""A Python client of a MetaBridge service, over TCP, with nothing but PyPI's
msgpack: it finds the service's address and token in this user's registry
(docs/PROTOCOL.md, "Finding a service on this machine") and speaks the
original protocol.

    cargo run --example inventory_daemon &
    python3 examples/python_client.py inventory list '[]' '["lisboa"]'

Arguments: SERVICE ENDPOINT [ARGS as JSON array] [CTOR_ARGS as JSON array].
Prints the result as JSON; exits 1 with the remote error on stderr.
"""
import fcntl
import json
import os
import socket
import struct
import sys

import msgpack

SLOTS, SLOT_BYTES, SLOT_HEAD = 256, 2048, 16


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def lookup(name):
    home = os.environ.get("METABRIDGE_HOME") or f"/dev/shm/metabridge-{os.geteuid()}"
    with open(os.path.join(home, "registry"), "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        table = f.read(SLOTS * SLOT_BYTES)
        fcntl.flock(f, fcntl.LOCK_UN)
    for i in range(len(table) // SLOT_BYTES):
        slot = table[i * SLOT_BYTES:(i + 1) * SLOT_BYTES]
        length, fmt, checksum = struct.unpack_from("<IIQ", slot)
        payload = slot[SLOT_HEAD:SLOT_HEAD + length]
        if length == 0 or fmt != 2 or len(payload) != length or fnv1a64(payload) != checksum:
            continue
        entry = msgpack.unpackb(payload, raw=False)
        # rmp-serde writes structs as arrays or maps; accept both.
        if isinstance(entry, list):
            keys = ["name", "pid", "start_time", "registered_at", "control_socket",
                    "tcp", "endpoints", "token_required", "token"]
            entry = dict(zip(keys, entry))
        if entry.get("name") == name:
            return entry
    raise SystemExit(f"service {name!r} is not registered in {home}")


def call(addr, request):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = msgpack.packb(request, use_bin_type=True)
        sock.sendall(struct.pack(">I", len(body)) + body)
        head = sock.recv(4, socket.MSG_WAITALL)
        (n,) = struct.unpack(">I", head)
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the service closed the connection")
            data += chunk
        return msgpack.unpackb(data, raw=False)


def main():
    service, endpoint = sys.argv[1], sys.argv[2]
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else []
    ctor_args = json.loads(sys.argv[4]) if len(sys.argv) > 4 else []
    entry = lookup(service)
    request = {"type": "call", "endpoint": endpoint, "args": args, "kwargs": {},
               "ctor_args": ctor_args, "ctor_kwargs": {}}
    if entry.get("token"):
        request["auth"] = entry["token"]
    reply = call(entry["tcp"], request)
    if reply.get("status") == "ok":
        result = reply["result"]
        print(json.dumps(result, ensure_ascii=False, default=lambda b: list(b)))
    else:
        err = reply["error"]
        print(f"{err['type']}: {err['message']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

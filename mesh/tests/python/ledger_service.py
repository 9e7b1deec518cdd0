"""The ledger service of the mesh tests, in Python: joins the mesh with
``create(..., mesh=...)`` (through the ``metabridge-mesh agent`` helper).
``record(id)`` appends ``id`` to the ledger file (one line per execution)
and answers the daemon's pid; ``whoami`` (idempotent) answers the pid.
A second service, ``greeter``, takes a constructor argument: ``greet(name)``
answers ``prefix + name``. Prints the ledger daemon's pid once both serve,
serves until its standard input closes.

Both services are given the same mesh setting, listen endpoint included:
the second to join takes a port zenoh picks.

Environment: MB_SERVICE, MB_HOST, MB_MESH, MB_CERT, MB_KEY, MB_LEDGER
(and METABRIDGE_TOKEN, METABRIDGE_MESH_TOOL, METABRIDGE_HOME)."""

import os
import sys

import metabridge as meta

env = os.environ
ledger = open(env["MB_LEDGER"], "a", buffering=1)


@meta.create(
    env["MB_SERVICE"],
    host=env["MB_HOST"],
    tls={"cert": env["MB_CERT"], "key": env["MB_KEY"]},
    mesh=env["MB_MESH"],
).daemon()
class Ledger:
    @meta.function
    def record(self, id):
        # One write of one line: the ledger shows every execution.
        ledger.write(id + "\n")
        return os.getpid()

    @meta.function(idempotent=True)
    def whoami(self):
        return os.getpid()


@meta.create(
    "greeter",
    host=env["MB_HOST"],
    tls={"cert": env["MB_CERT"], "key": env["MB_KEY"]},
    mesh=env["MB_MESH"],
).daemon()
class Greeter:
    def __init__(self, prefix):
        self.prefix = prefix

    @meta.function
    def greet(self, name):
        return self.prefix + name


handle = meta.run(env["MB_SERVICE"])
greeter = meta.run("greeter")
print(handle.pid, flush=True)
sys.stdin.read()
greeter.stop()
handle.stop()

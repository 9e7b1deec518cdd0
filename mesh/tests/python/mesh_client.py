"""A Python client of the mesh tests: ``connect(name, mesh=...)`` (through
the ``metabridge-mesh relay`` helper). Calls ``whoami`` until it has seen
MB_WANT distinct replicas (at most 20 s), then ``record(MB_ID)``, then an
endpoint of a service no replica serves; then ``greeter`` with a constructor argument; then forks: the child calls
through the same client (it gets a relay of its own), and the parent calls
again (its relay untouched by the child). Prints one JSON object: the pids
seen, record's answer, the class of the error for the missing one, and
whether the child's and the parent's calls after the fork were answered.

Environment: MB_SERVICE, MB_MESH, MB_CA, MB_WANT, MB_ID (and
METABRIDGE_TOKEN, METABRIDGE_MESH_TOOL)."""

import json
import os
import time

import metabridge as meta

env = os.environ
client = meta.connect(env["MB_SERVICE"], mesh=env["MB_MESH"], tls={"ca": env["MB_CA"]})
seen = set()
deadline = time.monotonic() + 20
while len(seen) < int(env["MB_WANT"]) and time.monotonic() < deadline:
    try:
        seen.add(client.whoami())
    except meta.MetaBridgeError:
        time.sleep(0.05)
recorded = client.record(env["MB_ID"])
try:
    meta.connect("no-such-service", mesh=env["MB_MESH"], tls={"ca": env["MB_CA"]}, timeout=2).ping()
    missing = None
except meta.MetaBridgeError as e:
    missing = type(e).__name__
greeted = meta.connect("greeter", "hello ", mesh=env["MB_MESH"], tls={"ca": env["MB_CA"]}).greet("mesh")
child = os.fork()
if child == 0:
    try:
        ok = client.whoami() in seen
    except BaseException:  # noqa: B902 - any failure is the answer
        ok = False
    os._exit(0 if ok else 1)
_, status = os.waitpid(child, 0)
forked = os.waitstatus_to_exitcode(status) == 0
after_fork = client.whoami() in seen
print(json.dumps({"seen": sorted(seen), "recorded": recorded, "missing": missing,
                  "forked": forked, "after_fork": after_fork, "greeted": greeted}))

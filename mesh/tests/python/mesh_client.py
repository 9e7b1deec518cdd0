"""A Python client of the mesh tests: ``connect(name, mesh=...)`` (through
the ``metabridge-mesh relay`` helper). Calls ``whoami`` until it has seen
MB_WANT distinct replicas (at most 20 s), then ``record(MB_ID)``, then an
endpoint of a service no replica serves; prints one JSON object: the pids
seen, record's answer, and the class of the error for the missing one.

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
print(json.dumps({"seen": sorted(seen), "recorded": recorded, "missing": missing}))

"""The original MetaBridge's three measurements, with this package.

    python examples/bench.py [--rust-service PATH] [--quick]

1. latency: one client, 200 calls of ``get("mundo!")`` after a warm-up:
   p50, p95, min;
2. throughput: 16 threads sharing one client for 2 s: calls/s;
3. bottleneck: 32 threads sharing one client for 5 s: calls/s, p50, p95;
4. payload: an 8 MiB ``bytes`` echo, one client: p50 and min of 20 calls;
   then the same with ``connect(..., buffers=True)`` (the result read in
   place as a ``metabridge.Buffer``; the services read their argument in
   place too: the Python one through ``@meta.function(buffers=True)``, the
   Rust one as a ``Blob``).

Each against a Python service of this package (``demo-service``, as in the
seed) and, if the Rust fixture service ``mb-fixture-test-service`` is given
(or found under ``target/release``; ``cargo build --release --features
test-fixtures --bins`` builds it), a Rust service (its ``echo`` endpoint, the
same work: prefix + argument), printed side by side with the original's
figures. With ``--original DIR`` (the original library unpacked, its package
installed in ``DIR/venv``, its ``examples/service_daemon.py`` with
``logger=False``: the commands are in ``shared/original/README.md``), the
original's own ``examples/bench.py`` is run first, in the same run, and its
figures are the ones compared; without it, the figures recorded in
``shared/baseline.md`` (logger off) stand in, and the output says so.
"""

import argparse
import ast
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import metabridge as meta

# The original's figures from shared/baseline.md (logger off), used when
# --original is not given.
RECORDED = {
    "p50": 23.2e-6,
    "p95": 24.9e-6,
    "min": 22.9e-6,
    "tput16": 42351,
    "tput32": 44132,
    "p50_32": 79e-6,
    "p95_32": 174e-6,
}


@meta.create("bench-py").daemon()
class Demo:
    def __init__(self, argumento):
        self.argumento = argumento

    @meta.function
    def get(self, outro_argumento):
        return f"{self.argumento} {outro_argumento}"

    @meta.function
    def echo_bytes(self, data):
        return data

    @meta.function(buffers=True)
    def echo_buffer(self, data):
        return data


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def latency(call, n=200, warmup=20000):
    for _ in range(warmup):
        call()
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return {"p50": pct(samples, 0.5), "p95": pct(samples, 0.95), "min": min(samples)}


def throughput(call, threads, seconds, timed=False):
    stop = threading.Event()
    counts = [0] * threads
    lat = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def worker(i):
        start.wait()
        c = 0
        mine = lat[i]
        clock = time.perf_counter
        while not stop.is_set():
            if timed:
                t0 = clock()
                call()
                if c % 16 == 0:
                    mine.append(clock() - t0)
            else:
                call()
            c += 1
        counts[i] = c

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    out = {"rate": sum(counts) / elapsed}
    if timed:
        flat = [x for xs in lat for x in xs]
        out["p50"] = pct(flat, 0.5)
        out["p95"] = pct(flat, 0.95)
    return out


PAYLOAD = bytes(range(256)) * (8 << 12)  # 8 MiB


def measure(call, echo_bytes, echo_buffer, quick):
    s = 0.5 if quick else 1.0
    assert echo_bytes(PAYLOAD) == PAYLOAD
    back = echo_buffer(PAYLOAD)
    assert back.lent and memoryview(back) == PAYLOAD
    del back
    return {
        "lat": latency(call),
        "t16": throughput(call, 16, 2 * s),
        "t32": throughput(call, 32, 5 * s, timed=True),
        "big": latency(lambda: echo_bytes(PAYLOAD), n=20, warmup=3),
        "buf": latency(lambda: echo_buffer(PAYLOAD), n=20, warmup=3),
    }


def rss_anon_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def numpy_copies(client, buffers):
    """A 64 MiB numpy array echoed by the Python service: the private
    memory this process gains holding the result, as bytes (the result
    copied into a bytes object) and as a Buffer viewed by numpy (read in
    place in the service's pool: shared memory, not private). Returns
    (MiB as bytes, MiB as a Buffer) or None without numpy."""
    try:
        import numpy as np
    except ImportError:
        return None
    arr = np.arange((64 << 20) // 8, dtype=np.float64)
    out = []
    for c, view in ((client, lambda r: np.frombuffer(r, dtype=np.uint8)),
                    (buffers, lambda r: np.frombuffer(r, dtype=np.float64))):
        c.echo_bytes(arr)  # warm: buffers and pools sized
        before = rss_anon_kib()
        r = c.echo_bytes(arr)
        v = view(r)
        assert v.nbytes == arr.nbytes
        out.append((rss_anon_kib() - before) / 1024)
        del v, r
    return tuple(out)


def run_original(root):
    """Runs the original library's own bench.py (in ``root/examples``, with
    ``root/venv``'s interpreter) and returns its figures in seconds."""
    py = os.path.join(root, "venv", "bin", "python")
    out = subprocess.run([py, "bench.py"], cwd=os.path.join(root, "examples"),
                         capture_output=True, text=True, timeout=300, check=True).stdout
    found = {}
    for line in out.splitlines():
        label, _, rest = line.partition(": ")
        if rest.startswith("{"):
            found[label.strip()] = ast.literal_eval(rest)
    try:
        lat, t16, t32 = found["Latência (ms)"], found["Vazão"], found["Gargalo"]
    except KeyError as e:
        raise SystemExit(f"the original's bench.py printed no {e} line:\n{out}")
    return {
        "p50": lat["p50_ms"] / 1e3,
        "p95": lat["p95_ms"] / 1e3,
        "min": lat["min_ms"] / 1e3,
        "tput16": t16["ops_per_sec"],
        "tput32": t32["ops_per_sec"],
        "p50_32": t32["p50_ms"] / 1e3,
        "p95_32": t32["p95_ms"] / 1e3,
    }


def find_rust_service(given):
    if given:
        return given
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in ("../../target/release/mb-fixture-test-service",
                 "../../target/debug/mb-fixture-test-service"):
        p = os.path.normpath(os.path.join(here, cand))
        if os.access(p, os.X_OK):
            return p
    return None


def us(x):
    return f"{x * 1e6:.2f} µs"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust-service", help="path of the Rust fixture service (mb-fixture-test-service)")
    ap.add_argument("--quick", action="store_true", help="half-length runs")
    ap.add_argument("--original", metavar="DIR",
                    help="the original library unpacked with its venv: run its bench.py in this run")
    opts = ap.parse_args()
    if opts.original:
        ORIGINAL, source = run_original(opts.original), "measured in this run"
    else:
        ORIGINAL, source = RECORDED, "recorded in shared/baseline.md, not this run"

    made_home = None
    if "METABRIDGE_HOME" not in os.environ:
        home = made_home = tempfile.mkdtemp(prefix="mb-bench-")
        os.chmod(home, 0o700)
        os.environ["METABRIDGE_HOME"] = home

    # Everything that forks comes before any thread starts.
    py_handle = meta.run("bench-py")
    rust = None
    rust_bin = find_rust_service(opts.rust_service)
    if rust_bin:
        rust = subprocess.Popen([rust_bin, "serve", "bench-rust"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                meta.connect("bench-rust", "Olá, ", 1).close()
                break
            except meta.ServiceNotFound:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    results = {}
    copies = None
    try:
        with meta.connect("bench-py", argumento="Olá,") as client, \
                meta.connect("bench-py", argumento="Olá,", buffers=True) as buffers:
            assert client.get("mundo!") == "Olá, mundo!"
            assert client._transport == "shm"
            get = client.get
            results["Python service"] = measure(lambda: get("mundo!"), client.echo_bytes,
                                                buffers.echo_buffer, opts.quick)
            copies = numpy_copies(client, buffers)
        if rust:
            with meta.connect("bench-rust", "Olá, ", 1) as client, \
                    meta.connect("bench-rust", "Olá, ", 1, buffers=True) as buffers:
                assert client.echo("mundo!") == "Olá, mundo!"
                echo = client.echo
                results["Rust service"] = measure(lambda: echo("mundo!"), client.echo_bytes,
                                                  buffers.echo_blob, opts.quick)
    finally:
        py_handle.stop()
        if rust:
            rust.send_signal(signal.SIGTERM)
            rust.wait(10)
        if made_home:
            shutil.rmtree(made_home, ignore_errors=True)

    cols = ["original (TCP)"] + [f"this package → {k}" for k in results]
    rows = [
        ("latency p50 (1 client, 200 calls)", lambda r: us(r["lat"]["p50"]), us(ORIGINAL["p50"])),
        ("latency p95", lambda r: us(r["lat"]["p95"]), us(ORIGINAL["p95"])),
        ("latency min", lambda r: us(r["lat"]["min"]), us(ORIGINAL["min"])),
        ("throughput, 16 threads, 2 s", lambda r: f"{r['t16']['rate']:,.0f}/s", f"{ORIGINAL['tput16']:,.0f}/s"),
        ("bottleneck, 32 threads, 5 s", lambda r: f"{r['t32']['rate']:,.0f}/s", f"{ORIGINAL['tput32']:,.0f}/s"),
        ("bottleneck p50", lambda r: us(r["t32"]["p50"]), us(ORIGINAL["p50_32"])),
        ("bottleneck p95", lambda r: us(r["t32"]["p95"]), us(ORIGINAL["p95_32"])),
        ("8 MiB bytes echo p50 (20 calls)", lambda r: f"{r['big']['p50'] * 1e3:.2f} ms", "-"),
        ("8 MiB bytes echo min", lambda r: f"{r['big']['min'] * 1e3:.2f} ms", "-"),
        ("8 MiB echo, buffers=True, p50", lambda r: f"{r['buf']['p50'] * 1e3:.2f} ms", "-"),
        ("8 MiB echo, buffers=True, min", lambda r: f"{r['buf']['min'] * 1e3:.2f} ms", "-"),
    ]
    width = 36
    print(f"{'':{width}}" + "".join(f"{c:>30}" for c in cols))
    for label, f, orig in rows:
        print(f"{label:{width}}" + f"{orig:>30}" + "".join(f"{f(r):>30}" for r in results.values()))
    py = results["Python service"]
    print()
    print(f"the original's figures: {source}")
    print(f"Python→Python p50 {us(py['lat']['p50'])}: {ORIGINAL['p50'] / py['lat']['p50']:.1f}x lower than the original; "
          f"16-thread throughput {py['t16']['rate'] / ORIGINAL['tput16']:.1f}x the original's")
    if "Rust service" in results:
        print(f"Python→Rust p50 {us(results['Rust service']['lat']['p50'])}")
    if copies:
        print(f"64 MiB numpy array echoed: the client's private memory grows {copies[0]:.0f} MiB "
              f"holding it as bytes (one copy), {copies[1]:.0f} MiB as a Buffer (read in place)")
    print(f"({os.cpu_count()} CPUs; Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Runs a workspace's tests with several test binaries at once.

`cargo test` runs its test binaries one after another; ours spend most of
their time waiting on real processes, sockets and timeouts, so on two
cores three at a time finish in about half the time. The tests are safe in
parallel (each has its own METABRIDGE_HOME, port 0, and cleans up), the
same guarantee `cargo test` relies on for the tests within one binary.

    python3 scripts/run-tests.py [cargo test arguments...]

It builds every test binary with `cargo test --no-run` (the same
arguments), runs them JOBS at a time (default: CPUs + 1), the longest
known first, each with the environment `cargo test` gives it, and the doc
tests (`cargo test --doc`) as one more job. Each binary's output is
printed whole when it ends; the exit status is non-zero if any failed.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

# Test binaries that take longest (started first, so that the run is not
# left waiting on one of them at the end).
SLOW_FIRST = ["trybuild", "instance_cache", "payloads", "doc tests", "interop", "async_client"]


def build(cargo_args):
    """Builds the test binaries; returns (name, executable, manifest dir)."""
    cmd = ["cargo", "test", *cargo_args, "--no-run", "--message-format=json-render-diagnostics"]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True).stdout
    found = []
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        target = msg["target"]
        manifest = os.path.dirname(msg["manifest_path"])
        label = target["name"]
        if "lib" in target["kind"] or "bin" in target["kind"]:
            label = f"{label} (unit)"
        found.append((label, msg["executable"], manifest))
    return found


def package_name(manifest_dir):
    """The package's name, from its Cargo.toml (for CARGO_PKG_NAME)."""
    with open(os.path.join(manifest_dir, "Cargo.toml"), encoding="utf-8") as f:
        in_package = False
        for line in f:
            line = line.strip()
            if line.startswith("["):
                in_package = line == "[package]"
            elif in_package and line.startswith("name"):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def sysroot_lib():
    """The toolchain's libraries (a proc-macro crate's test binary links
    libstd dynamically)."""
    out = subprocess.run(["rustc", "--print", "target-libdir"], stdout=subprocess.PIPE, text=True)
    return out.stdout.strip()


SYSROOT_LIB = None


def run_binary(label, exe, manifest_dir, extra):
    env = dict(os.environ)
    # What `cargo test` sets for a test binary at run time: the package's
    # directory and name, cargo itself, and the library path.
    env["CARGO_MANIFEST_DIR"] = manifest_dir
    env["CARGO_PKG_NAME"] = package_name(manifest_dir)
    env.setdefault("CARGO", shutil.which("cargo") or "cargo")
    paths = [os.path.dirname(exe), SYSROOT_LIB, env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    start = time.monotonic()
    done = subprocess.run(
        [exe, *extra], cwd=manifest_dir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return label, done.returncode, done.stdout, time.monotonic() - start


def run_doc_tests(cargo_args):
    start = time.monotonic()
    done = subprocess.run(
        ["cargo", "test", *cargo_args, "--doc"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return "doc tests", done.returncode, done.stdout, time.monotonic() - start


def rank(label):
    for i, slow in enumerate(SLOW_FIRST):
        if label.startswith(slow):
            return i
    return len(SLOW_FIRST)


def main():
    global SYSROOT_LIB
    SYSROOT_LIB = sysroot_lib()
    cargo_args = sys.argv[1:]
    binaries = build(cargo_args)
    jobs = int(os.environ.get("JOBS", (os.cpu_count() or 2) + 1))
    work = [("doc tests", None, None)] + binaries
    work.sort(key=lambda w: rank(w[0]))
    failed = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = []
        for label, exe, manifest in work:
            if exe is None:
                futures.append(pool.submit(run_doc_tests, cargo_args))
            else:
                futures.append(pool.submit(run_binary, label, exe, manifest, []))
        for fut in futures:
            label, code, output, took = fut.result()
            print(f"---- {label}: {'ok' if code == 0 else 'FAILED'} in {took:.1f} s", flush=True)
            if code != 0 or os.environ.get("VERBOSE"):
                print(output, flush=True)
            else:
                # The summary lines, so that the counts stay visible.
                for line in output.splitlines():
                    if line.startswith("test result:"):
                        print("     " + line)
            if code != 0:
                failed.append(label)
    if failed:
        print(f"FAILED: {', '.join(failed)}", flush=True)
        sys.exit(1)
    print(f"all {len(work)} test binaries passed", flush=True)


if __name__ == "__main__":
    main()

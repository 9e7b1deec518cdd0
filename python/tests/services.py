"""Services of the tests, defined at import (the daemons are forks of the
pytest process, so they see these classes)."""

import asyncio
import itertools
import os
import time

import metabridge as meta

_ids = itertools.count()


class Refused(Exception):
    pass


class Panic(Exception):
    pass


@meta.create("forms").daemon()
class Forms:
    """Every decorator form and method kind."""

    def __init__(self, base=0, *, label="none"):
        self.base = base
        self.label = label
        self.id = next(_ids)
        self.kept = []

    @meta.function
    def plain(self, x):
        return x + self.base

    @meta.endpoint
    def bare(self):
        return "bare"

    @meta.endpoint("named")
    def by_position(self):
        return "named"

    @meta.endpoint(name="kw_named")
    def by_keyword(self):
        return "kw_named"

    @meta.dynamic_name
    def dyn(self):
        return "dynamic"

    @meta.function
    @staticmethod
    def static_inner(a, b=2):
        return a * b

    @staticmethod
    @meta.static_outer
    def static_below(a):
        return -a

    @meta.function
    @classmethod
    def klass(cls, suffix):
        return cls.__name__ + suffix

    @meta.function
    async def later(self, a, b):
        await asyncio.sleep(0.01)
        return f"A soma é: {a + b}"

    @meta.function
    async def async_fails(self):
        await asyncio.sleep(0)
        raise KeyError("missing")

    @meta.function
    def who(self):
        return {"id": self.id, "base": self.base, "label": self.label, "pid": os.getpid()}

    @meta.function
    def echo(self, value):
        return value

    @meta.function(buffers=True)
    def keep(self, data):
        """Keeps a bytes argument as it arrived: what it is, whether it was
        read in place, its length."""
        self.kept.append(data)
        return [type(data).__name__, data.lent, len(data)]

    @meta.endpoint("keep_later", buffers=True)
    async def keep_async(self, data):
        self.kept.append(data)
        return [type(data).__name__, data.lent, len(data)]

    @meta.function
    def kept_bytes(self):
        return [bytes(b) for b in self.kept]

    @meta.function
    def fails(self, text):
        raise ValueError(text)

    @meta.function
    def unserializable(self):
        return object()

    @meta.function
    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    def not_exposed(self):
        return "hidden"


@meta.create("ctor-fails").daemon()
class CtorFails:
    def __init__(self, fail):
        if fail:
            raise RuntimeError("no instance today")

    @meta.function
    def ping(self):
        return "pong"


@meta.create("startup-fails").daemon()
class StartupFails:
    def __init__(self):
        raise RuntimeError("cannot start")

    @meta.function
    def ping(self):
        return "pong"


@meta.create("startup-hangs").daemon()
class StartupHangs:
    def __init__(self):
        import time

        time.sleep(3600)

    @meta.function
    def ping(self):
        return "pong"


@meta.create("interop-fixture", host="127.0.0.1").daemon()
class Fixture:
    """The Rust fixture's endpoints, for the original protocol's client
    (tests/python/interop_client.py)."""

    def __init__(self, prefix, scale):
        self.prefix = prefix
        self.scale = scale

    @meta.function
    def echo(self, text):
        return self.prefix + text

    @meta.function
    def scaled(self, x):
        if not isinstance(x, int):
            raise TypeError(f"scaled(): argument 'x' is not an int: {x!r}")
        return x * self.scale

    @meta.renamed
    def original(self):
        return "renamed and original"

    @meta.function
    async def later(self, ms):
        await asyncio.sleep(ms / 1000)
        return f"{self.prefix}after {ms} ms"

    @meta.function
    def blob(self, data):
        return len(data)

    @meta.function
    def boom(self):
        raise Panic("boom on purpose")

    @meta.function
    def check(self, value):
        if value < 0:
            raise Refused(f"refused: {value} is negative")
        return value


@meta.create("shadowed").daemon()
class Shadowed:
    """An endpoint named like the client's method ``endpoints()``."""

    @meta.function
    def endpoints(self):
        return "the remote endpoints()"

    @meta.endpoint("alias_of_other")
    def other(self):
        return "other"


@meta.create("mesh-local-only", mesh="tcp/127.0.0.1:9").daemon()
class MeshLocalOnly:
    """Meshed, but listening on loopback with no TLS: refused at start."""

    @meta.function(idempotent=True)
    def whoami(self):
        return os.getpid()

    @meta.endpoint("put", idempotent=False)
    def store(self, x):
        return x


@meta.create(
    "mesh-secure",
    host="0.0.0.0",
    tls={"cert": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"},
    mesh="tcp/127.0.0.1:9",
).daemon()
class MeshSecure:
    """Meshed and exposed with TLS: what the mesh asks (with a token)."""

    @meta.endpoint("get", idempotent=True)
    def fetch(self):
        return 1

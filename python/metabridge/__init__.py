"""MetaBridge: call code in another process as if it were local.

The original MetaBridge's API on the Rust runtime. A service is a class
whose methods are endpoints::

    import metabridge as meta

    @meta.create("demo-service").daemon()
    class Service:
        def __init__(self, argumento):
            self.argumento = argumento

        @meta.teste                 # endpoint "teste" (and "home")
        def home(self):
            return "Mensagem da home do serviço!"

        @meta.function              # endpoint "get"
        def get(self, outro):
            return f"{self.argumento} {outro}"

    handle = meta.run()             # a daemon process, ready on return

    with meta.connect("demo-service", argumento="Olá,") as client:
        client.get("mundo!")        # "Olá, mundo!", over shared memory

Services are found by name in a machine-wide registry (``$METABRIDGE_HOME``,
a 0700 directory of the user; default ``/dev/shm/metabridge-<uid>``).
Calls travel over sealed shared-memory rings; ``METABRIDGE_TRANSPORT=tcp``
forces TCP, which speaks the original's wire protocol (4-byte big-endian
length + MessagePack map), so clients of the original can call these
services and this client can call services written with the original.
"""

import asyncio
import atexit
import inspect
import os
import signal
import sys
import threading
import time
import traceback

from . import _native
from ._native import Buffer

__version__ = "0.1.0"

__all__ = [
    "create",
    "function",
    "endpoint",
    "run",
    "connect",
    "gc",
    "ServiceBuilder",
    "ServiceClient",
    "Buffer",
    "DaemonHandle",
    "MetaBridgeError",
    "ServiceNotFound",
    "ServiceAlreadyExists",
    "RemoteExecutionError",
    "CallTimeout",
    "ServiceGone",
    "UnsafeFork",
]


# ---------------------------------------------------------------- errors


class MetaBridgeError(Exception):
    """Base class of every MetaBridge error."""


class ServiceNotFound(MetaBridgeError):
    """No live service of that name is registered (or none was defined)."""


class ServiceAlreadyExists(MetaBridgeError):
    """A live process already serves a service of that name."""


class RemoteExecutionError(MetaBridgeError):
    """The endpoint (or the service around it) raised an error.

    ``type`` is the remote exception's class name (e.g. ``"ValueError"``,
    ``"TypeError"``, ``"NotFound"`` for an unknown endpoint) and
    ``message`` its text; ``str(e)`` is ``"<type>: <message>"``.
    """

    type = "Exception"
    remote_type = "Exception"
    remote_message = ""

    @property
    def message(self):
        """The remote exception's text."""
        return self.remote_message


class CallTimeout(MetaBridgeError, TimeoutError):
    """A call (or connecting) took longer than the client's timeout."""


class ServiceGone(MetaBridgeError, ConnectionError):
    """The service's process died or closed the connection mid-call."""


class UnsafeFork(MetaBridgeError, RuntimeError):
    """:func:`run` was called while other threads run Python code in this
    process: its daemon is a ``fork``, which copies every lock those
    threads hold, so the daemon could hang on one. Nothing was forked.
    Call ``run`` before starting threads."""


_native._register_errors(
    {
        "MetaBridgeError": MetaBridgeError,
        "ServiceNotFound": ServiceNotFound,
        "ServiceAlreadyExists": ServiceAlreadyExists,
        "RemoteExecutionError": RemoteExecutionError,
        "CallTimeout": CallTimeout,
        "ServiceGone": ServiceGone,
    }
)


# ------------------------------------------------------------ decorators

_MARK = "__metabridge_endpoints__"
_BUFFERS = "__metabridge_buffers__"
_IDEMPOTENT = "__metabridge_idempotent__"


def _target(obj):
    return obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj


def _mark(obj, name=None, buffers=False, idempotent=False):
    """Marks a method (function, staticmethod or classmethod) as an
    endpoint, reachable as ``name`` (if given) and under its own name;
    ``buffers``: its bytes arguments arrive as :class:`Buffer`;
    ``idempotent``: a mesh client may retry it on another replica."""
    target = _target(obj)
    if not callable(target):
        raise TypeError(f"metabridge: cannot expose {obj!r} as an endpoint")
    if buffers:
        setattr(target, _BUFFERS, True)
    if idempotent:
        setattr(target, _IDEMPOTENT, True)
    names = target.__dict__.get(_MARK)
    if names is None:
        names = []
        setattr(target, _MARK, names)
    if name and name not in names:
        names.append(name)
    return obj


def function(func=None, *, buffers=False, idempotent=False):
    """Exposes a method under its own name: ``@meta.function``.

    ``@meta.function(idempotent=True)``: running it twice does no harm, so
    a mesh client whose call to one replica had an unknown outcome (the
    replica died during it) may call it again on another. Any other
    endpoint's call is never sent twice.

    ``@meta.function(buffers=True)``: the endpoint's bytes arguments arrive
    as read-only :class:`Buffer` objects read in place from shared memory
    (no copy; ``numpy.frombuffer`` works on them), instead of ``bytes``. A
    buffer the endpoint keeps pins the caller's memory until released or
    collected; past the process's cap on such bytes (256 MiB) they arrive
    as copies. Over TCP they are always copies, in a Buffer all the same.
    """
    if func is None:
        return lambda f: _mark(f, buffers=buffers, idempotent=idempotent)
    return _mark(func, buffers=buffers, idempotent=idempotent)


def endpoint(name=None, *, alias=None, buffers=False, idempotent=False):
    """Exposes a method under an endpoint name and under its own name.

    ``@meta.endpoint`` (its own name only), ``@meta.endpoint("x")`` or
    ``@meta.endpoint(name="x")``; ``buffers=True`` and ``idempotent=True``
    as for :func:`function`.
    """
    if name is not None and not isinstance(name, str):
        return _mark(name)  # used bare: @meta.endpoint
    name = name or alias

    def decorate(func):
        return _mark(func, name, buffers, idempotent)

    return decorate


def __getattr__(name):
    """``@meta.<any_name>``: exposes a method as ``any_name`` (and under its
    own name), like ``@meta.endpoint("any_name")``."""
    if name.startswith("_"):
        raise AttributeError(f"module 'metabridge' has no attribute {name!r}")
    return endpoint(name)


# ------------------------------------------------------------- services


class _Definition:
    __slots__ = ("name", "host", "port", "logger", "tls", "mesh", "cls", "endpoints", "idempotent",
                 "is_daemon")

    def __init__(self, name, host, port, logger, tls=None, mesh=None):
        self.name = name
        self.host = host
        self.port = port
        self.logger = logger
        self.tls = tls
        self.mesh = mesh
        self.idempotent = []
        self.cls = None
        self.endpoints = []
        self.is_daemon = False


_services = {}
_last = None
_lock = threading.Lock()


def _collect_endpoints(cls):
    """``[(names, attribute, is_async, buffers)]`` of the marked methods of
    ``cls`` and its bases (a subclass's definition wins)."""
    found = {}
    for klass in reversed(cls.__mro__):
        for attr, obj in vars(klass).items():
            target = _target(obj)
            names = getattr(target, "__dict__", {}).get(_MARK) if callable(target) else None
            if names is None:
                found.pop(attr, None)  # overridden by a plain attribute
                continue
            all_names = list(dict.fromkeys(list(names) + [attr]))
            found[attr] = (all_names, attr, inspect.iscoroutinefunction(target),
                           bool(target.__dict__.get(_BUFFERS, False)))
    return list(found.values())


def _collect_idempotent(cls, endpoints):
    """Every name of the endpoints marked ``idempotent=True``."""
    names = []
    for all_names, attr, _, _ in endpoints:
        if _target(inspect.getattr_static(cls, attr)).__dict__.get(_IDEMPOTENT, False):
            names.extend(all_names)
    return names


class ServiceBuilder:
    """What :func:`create` returns: ``.daemon()`` and then a class
    decorator (it also decorates directly)."""

    def __init__(self, definition):
        self._definition = definition

    def daemon(self):
        """Marks the service to run as a daemon process (started by
        :func:`run`); returns the class decorator."""
        self._definition.is_daemon = True
        return self

    def __call__(self, cls):
        global _last
        if not isinstance(cls, type):
            raise TypeError("metabridge.create(...) decorates a class")
        d = self._definition
        d.cls = cls
        d.endpoints = _collect_endpoints(cls)
        d.idempotent = _collect_idempotent(cls, d.endpoints)
        with _lock:
            _services[d.name] = d
            _last = d
        cls.__metabridge_service__ = d.name
        return cls


def _service_tls(tls):
    """``create(tls=...)`` as ``(cert, key, client_ca, allow)``: a dict
    with ``"cert"`` and ``"key"`` (PEM files' paths) and optionally
    ``"client_ca"`` (mutual TLS) and ``"allow"`` (the clients admitted:
    certificate fingerprints ``"sha256:..."`` or DNS names), or a
    ``(cert, key)`` pair."""
    if tls is None:
        return None
    if isinstance(tls, (tuple, list)) and len(tls) == 2:
        return (os.fspath(tls[0]), os.fspath(tls[1]), None, [])
    if isinstance(tls, dict):
        unknown = set(tls) - {"cert", "key", "client_ca", "allow"}
        if unknown or "cert" not in tls or "key" not in tls:
            raise TypeError(
                "tls= takes {'cert': path, 'key': path} and optionally 'client_ca' and 'allow'"
                + (f"; unknown: {sorted(unknown)}" if unknown else "")
            )
        ca = tls.get("client_ca")
        allow = tls.get("allow") or []
        if isinstance(allow, str) or not all(isinstance(a, str) for a in allow):
            raise TypeError("tls['allow'] takes a list of strings: 'sha256:...' fingerprints or DNS names")
        return (os.fspath(tls["cert"]), os.fspath(tls["key"]), None if ca is None else os.fspath(ca), list(allow))
    raise TypeError("tls= takes a dict {'cert': path, 'key': path} or a (cert, key) pair")


def _client_tls(tls):
    """``connect(tls=...)`` as ``(ca, pin, cert, key, server_name)``."""
    if tls is None:
        return None
    if not isinstance(tls, dict):
        raise TypeError("tls= takes a dict: {'ca': path} or {'pin': 'sha256:...'}")
    unknown = set(tls) - {"ca", "pin", "cert", "key", "server_name"}
    if unknown:
        raise TypeError(f"tls= got unknown keys {sorted(unknown)}")
    path = lambda k: None if tls.get(k) is None else os.fspath(tls[k])
    return (path("ca"), tls.get("pin"), path("cert"), path("key"), tls.get("server_name"))


def create(name, host=None, *, logger=False, port=None, tls=None, mesh=None):
    """Defines a service called ``name``: ``@meta.create(name).daemon()``
    on its class.

    ``host`` exposes its TCP listener on that interface (``"0.0.0.0"``: the
    network; default ``127.0.0.1`` with a per-service token that only this
    user's clients know); local clients still use shared memory.
    ``logger=True`` logs the daemon's start and stop, connections and every
    call (endpoint, arguments and result cut short, duration) on standard
    error, through the runtime's logger. ``tls={"cert": path, "key": path}``
    (and ``"client_ca"`` to require client certificates) serves TLS on its
    TCP port (a key file readable by this user only; the original
    library's clients, which cannot speak TLS, are refused there).
    ``mesh="tcp/10.0.0.2:7447,tcp/10.0.0.3:7447"`` (seed endpoints and
    options, or a zenoh configuration file) joins that mesh once the
    service serves, so that clients on other hosts find it by name; it
    needs ``host`` set to an address they reach, ``tls``, and a token
    (``METABRIDGE_TOKEN``) or ``client_ca``, else :func:`run` raises. The
    membership is kept by the ``metabridge-mesh agent`` helper (found as
    ``METABRIDGE_MESH_TOOL``, beside the interpreter, or on ``PATH``).

    An invalid ``name`` raises ``ValueError`` here: 1 to 64 bytes of UTF-8
    without control characters, invisible or direction-changing
    characters (Unicode format characters such as U+200B or U+202E,
    spaces other than " "), "/" or "\\"; not "." or ".."; no leading or
    trailing whitespace.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("the service name must be a non-empty string")
    # The runtime's rule (the Rust API's and the macro's): a name becomes a
    # file name, and must not look like another in `metabridge list`.
    problem = _native.service_name_problem(name)
    if problem is not None:
        raise ValueError(f"invalid service name {name!r}: {problem}")
    if mesh is not None and not isinstance(mesh, (str, os.PathLike)):
        raise TypeError("mesh= takes a setting: seed endpoints (\"tcp/host:port,...\") or a zenoh config file")
    mesh = None if mesh is None else os.fspath(mesh)
    return ServiceBuilder(_Definition(name, host, port, logger, _service_tls(tls), mesh))


# -------------------------------------------------------------- daemons

_handles = []
_creator_pid = os.getpid()


class DaemonHandle:
    """A service running in a daemon process started by :func:`run`.

    The daemon stops when :meth:`stop` is called, on SIGTERM, and when the
    process that started it exits (unless :meth:`detach` was called).
    """

    def __init__(self, native, service):
        self._native = native
        self.service = service
        self.pid = native.pid

    @property
    def tcp_address(self):
        """``host:port`` of the service's TCP listener."""
        return self._native.tcp_address

    def is_running(self):
        """True while the daemon process runs."""
        return self._native.is_running()

    def stop(self, timeout=5.0):
        """Stops the daemon gracefully (SIGTERM: it finishes the calls in
        progress, unregisters, removes its socket), or with SIGKILL if it
        has not ended after ``timeout`` seconds."""
        if not self.is_running():
            return
        self._native.signal(signal.SIGTERM)
        deadline = time.monotonic() + (timeout if timeout is not None else 5.0)
        while self.is_running():
            if time.monotonic() >= deadline:
                self._native.signal(signal.SIGKILL)
                self.join()
                return
            time.sleep(0.002)

    def join(self, timeout=None):
        """Waits until the daemon ends (at most ``timeout`` seconds).
        Ctrl+C interrupts it with KeyboardInterrupt."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while self.is_running():
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def detach(self):
        """Lets the daemon outlive this process (it serves until SIGTERM)."""
        self._native.detach()
        if self in _handles:
            _handles.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<DaemonHandle service={self.service!r} pid={self.pid}>"


def _stop_all():
    if os.getpid() != _creator_pid:
        return
    for h in list(_handles):
        try:
            h.stop()
        except Exception:
            pass
    _handles.clear()


atexit.register(_stop_all)


def _child_main(d, ready_w, parent):
    """In the forked child: an event loop for ``async def`` endpoints, then
    the runtime serves until stopped and exits the process."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="metabridge-asyncio", daemon=True).start()

    def submit(coro, done):
        future = asyncio.run_coroutine_threadsafe(coro, loop)

        def finished(f):
            try:
                result = f.result()
            except BaseException as e:  # noqa: B902 - any error goes back
                done(False, e)
            else:
                done(True, result)

        future.add_done_callback(finished)

    if d.logger:
        sys.stderr.write(f"metabridge: service {d.name!r} starting in pid {os.getpid()}\n")
    prebuilt = _probe(d.cls, ready_w)
    _native.serve_forked(
        d.name,
        d.cls,
        d.endpoints,
        submit,
        ready_w,
        parent,
        d.host,
        d.port,
        prebuilt,
        d.logger,
        d.tls,
        d.mesh,
        d.idempotent,
    )


def _probe(cls, ready_w):
    """A class whose constructor needs no argument is instantiated at
    startup, so that an exception in its ``__init__`` is a startup error
    raised by :func:`run` (the instance then serves the clients that give
    no constructor arguments). Returns it, or None."""
    try:
        inspect.signature(cls).bind()
    except (TypeError, ValueError):
        return None  # needs arguments: built per client, errors per call
    try:
        return cls()
    except BaseException as e:  # noqa: B902 - reported to the parent
        text = f"{type(e).__name__} in {cls.__name__}.__init__: {e}"
        # The runtime's report: FAILED, then [kind 0, text, pid 0].
        os.write(ready_w, b"\x01" + _native.packb([0, text, 0]))
        os._exit(1)


def _task_ids():
    """The kernel's ids of this process's threads (``/proc/self/task``), or
    None where there is no ``/proc``."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except (OSError, ValueError):
        return None


def _python_threads_besides_this_one():
    """Names of the threads, besides the calling one, that run Python code:
    what a fork would copy in the middle of holding a Python-level lock
    (a lock of the program's, logging's, a queue's, the import lock).

    Those started by :mod:`threading` are in ``threading.enumerate()``;
    those started with ``_thread.start_new_thread`` or by a C extension
    are not, but every thread running Python has a frame in
    ``sys._current_frames()``. Threads that run no Python are not counted:
    native pools such as the OpenBLAS threads ``import numpy`` starts
    (OpenBLAS registers its own fork handlers; refusing them would refuse
    ``import numpy`` before ``run``), and the runtime's own helper threads
    in a client process (``metabridge-*``, e.g. a TCP call's waiter): the
    client state they serve belongs to one fork generation, and a forked
    child leaves it alone."""
    tasks = _task_ids()
    if tasks is not None and len(tasks) <= 1:
        return []  # the usual case: this process has one thread
    me = threading.get_ident()
    found = {}
    for t in threading.enumerate():
        if t.ident == me:
            continue
        # Python 3.11 keeps the entry of a foreign thread that once called
        # threading.current_thread() after that thread has ended.
        if tasks is not None and t.native_id is not None and t.native_id not in tasks:
            continue
        found[t.ident] = t.name
    frames = getattr(sys, "_current_frames", dict)()
    for ident in frames:
        if ident != me and ident not in found:
            found[ident] = f"a thread not started by threading (ident {ident})"
    return list(found.values())


def run(name=None, *, wait=False, poll_interval=0.05, startup_timeout=5.0):
    """Starts a defined service (``name``, or the one defined last) in a
    daemon process and returns its :class:`DaemonHandle` once the service
    is registered and accepting calls.

    A startup failure is raised here: :class:`ServiceAlreadyExists` when a
    live process serves that name, :class:`MetaBridgeError` otherwise (an
    exception in ``__init__`` of a class whose constructor takes no
    required argument: it is instantiated at startup).
    The daemon is a ``fork`` of this process: call ``run`` before starting
    threads; while other threads run Python code (started by
    :mod:`threading` or not: ``_thread``, a C extension's thread with a
    Python frame) it raises :class:`UnsafeFork` (a fork would copy the
    locks they hold) instead of forking. Native threads that run no
    Python (numpy's OpenBLAS pool) do not count.
    ``startup_timeout`` (seconds) bounds the wait for readiness:
    past it the daemon is killed and the error raised. ``wait=True`` then
    blocks until the daemon ends (as :meth:`DaemonHandle.join`), checking
    it every ``poll_interval`` seconds (so Ctrl+C stops the wait).
    """
    with _lock:
        d = _services.get(name) if name is not None else _last
    if d is None:
        raise ServiceNotFound(
            f"no service {name!r} was defined" if name else "no service was defined"
        )
    others = _python_threads_besides_this_one()
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        module = d.cls.__module__
        if module == "__main__":
            module = "<the module defining it>"  # a script's class: no name to import
        raise UnsafeFork(
            f"meta.run() starts the daemon of {d.name!r} by forking this process, and "
            f"{len(others)} other thread(s) run Python in it ({shown}): a fork copies any "
            "lock they hold, and the daemon could hang on one. Call meta.run() before "
            "starting threads (at the top of the program, before thread pools or libraries "
            "that start threads), or serve the service from a process of its own: "
            f'python -c "import {module}, metabridge; metabridge.run({d.name!r}, wait=True)"'
        )
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the daemon
        try:
            os.close(read_fd)
            _child_main(d, write_fd, parent)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(write_fd)
    native = _native.wait_forked(pid, read_fd, float(startup_timeout))
    handle = DaemonHandle(native, d.name)
    _handles.append(handle)
    if d.logger:
        sys.stderr.write(f"metabridge: service {d.name!r} ready (pid {handle.pid})\n")
    if wait:
        while handle.is_running():
            time.sleep(poll_interval)
    return handle


# --------------------------------------------------------------- client


class ServiceClient:
    """A proxy of one service for one set of constructor arguments: its
    attributes are the endpoints (``client.get("x")``, keyword arguments
    too). Usable by many threads at once, and in ``with``."""

    def __init__(self, native):
        self.__dict__["_native"] = native
        # As the original's client: the list is fetched once, at connect.
        self.__dict__["_endpoint_names"] = list(native.endpoints())

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        ep = self._native.endpoint(name)
        self.__dict__[name] = ep
        return ep

    def _call(self, endpoint, *args, **kwargs):
        """Calls an endpoint by name."""
        return self._native.call(endpoint, args, kwargs or None)

    def endpoints(self):
        """The service's endpoint names (aliases included), sorted, as
        fetched when the client connected: the original's
        ``ServiceClient.endpoints()``. (An endpoint named ``endpoints`` is
        still reachable as ``client._call("endpoints")``.)"""
        return list(self._endpoint_names)

    def _endpoints(self):
        """The service's endpoint names, sorted, asked now."""
        return self._native.endpoints()

    @property
    def _transport(self):
        """``"shm"`` or ``"tcp"``."""
        return self._native.transport

    def close(self):
        """Closes the connection; later calls fail."""
        self._native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<ServiceClient {self._native.name!r} over {self._native.transport}>"


class MeshServiceClient:
    """A proxy of a service found by name across a mesh (what
    ``connect(name, mesh=...)`` returns): its attributes are the endpoints.
    Each call goes to one replica: this host's if it has one, else the
    remote one with the fewest calls outstanding. A call whose replica
    died during it raises :class:`ServiceGone` and is never sent again,
    unless its endpoint is ``idempotent``; no replica at all raises
    :class:`ServiceNotFound`. Usable by many threads at once."""

    def __init__(self, native):
        self.__dict__["_native"] = native

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        native = self._native

        def call(*args, **kwargs):
            return native.call(name, args, kwargs or None)

        call.__name__ = name
        self.__dict__[name] = call
        return call

    def _call(self, endpoint, *args, **kwargs):
        """Calls an endpoint by name."""
        return self._native.call(endpoint, args, kwargs or None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def __repr__(self):
        return f"<MeshServiceClient {self._native.name!r}>"


def connect(name, *ctor_args, timeout=5.0, buffers=False, address=None, tls=None, mesh=None,
            **ctor_kwargs):
    """Connects to the live service ``name``; ``ctor_args`` and
    ``ctor_kwargs`` are its constructor's arguments (the service keeps one
    instance per distinct set, in an LRU). ``timeout`` bounds each call, in
    seconds. With ``buffers=True``, bytes results are :class:`Buffer`
    objects instead of ``bytes``: large ones arriving through shared
    memory are read in place, with no copy (``memoryview(b)``,
    ``numpy.frombuffer(b, dtype)``), and keep their block of the service's
    memory until released or collected. ``address="host:port"`` reaches
    it over TCP without the registry (another host); ``tls={"ca": path}``
    or ``tls={"pin": "sha256:..."}`` (with ``"cert"`` and ``"key"`` for
    mutual TLS, ``"server_name"`` to check another name) verifies a TLS
    service. Raises :class:`ServiceNotFound` if no such service runs.

    ``mesh="tcp/10.0.0.2:7447,..."`` finds the service by name across that
    mesh (a :class:`MeshServiceClient`; ``tls`` is required, or
    ``METABRIDGE_TLS_CA``/``PIN``; the token is ``METABRIDGE_TOKEN``). Its
    calls go through the ``metabridge-mesh relay`` helper; ``address`` and
    ``buffers`` are not taken with it."""
    if mesh is not None:
        if address is not None or buffers:
            raise TypeError("connect(mesh=...) takes neither address nor buffers")
        return MeshServiceClient(
            _native.connect_mesh(name, os.fspath(mesh), float(timeout), ctor_args,
                                 ctor_kwargs or None, tls=_client_tls(tls))
        )
    native = _native.connect(
        name,
        ctor_args,
        ctor_kwargs or None,
        float(timeout),
        address=address,
        buffers=bool(buffers),
        tls=_client_tls(tls),
    )
    return ServiceClient(native)


def gc():
    """Removes what killed services left behind (stale registry entries,
    control sockets, segment files); returns a dict: ``"removed"``, a list
    of what was removed, and ``"kept"``, what was left because its process
    lives, one line of text each."""
    removed, kept = _native.gc()
    return {"removed": removed, "kept": kept}

"""Type stubs of metabridge's public API (the original's names)."""

from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Type, TypedDict, TypeVar, Union, overload

__version__: str

_F = TypeVar("_F", bound=Union[Callable[..., Any], staticmethod, classmethod])
_C = TypeVar("_C", bound=type)

class MetaBridgeError(Exception): ...
class ServiceNotFound(MetaBridgeError): ...
class ServiceAlreadyExists(MetaBridgeError): ...

class RemoteExecutionError(MetaBridgeError):
    type: str
    remote_type: str
    remote_message: str
    @property
    def message(self) -> str: ...

class CallTimeout(MetaBridgeError, TimeoutError): ...
class ServiceGone(MetaBridgeError, ConnectionError): ...
class UnsafeFork(MetaBridgeError, RuntimeError):
    """``run()`` refused to fork: other threads run Python code here."""

@overload
def function(func: _F) -> _F: ...
@overload
def function(
    func: None = ..., *, buffers: bool = ..., idempotent: bool = ...
) -> Callable[[_F], _F]: ...
@overload
def endpoint(name: _F) -> _F: ...
@overload
def endpoint(
    name: Optional[str] = ...,
    *,
    alias: Optional[str] = ...,
    buffers: bool = ...,
    idempotent: bool = ...,
) -> Callable[[_F], _F]: ...
def __getattr__(name: str) -> Callable[[_F], _F]: ...

class ServiceBuilder:
    def daemon(self) -> "ServiceBuilder": ...
    def __call__(self, cls: _C) -> _C: ...

def create(
    name: str,
    host: Optional[str] = ...,
    *,
    logger: bool = ...,
    port: Optional[int] = ...,
    tls: Optional[Dict[str, str]] = ...,
    mesh: Optional[str] = ...,
) -> ServiceBuilder: ...

class DaemonHandle:
    pid: int
    service: str
    @property
    def tcp_address(self) -> str: ...
    def is_running(self) -> bool: ...
    def stop(self, timeout: Optional[float] = ...) -> None: ...
    def join(self, timeout: Optional[float] = ...) -> None: ...
    def detach(self) -> None: ...
    def __enter__(self) -> "DaemonHandle": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...

def run(
    name: Optional[str] = ...,
    *,
    wait: bool = ...,
    poll_interval: float = ...,
    startup_timeout: float = ...,
) -> DaemonHandle: ...

class ServiceClient:
    def __getattr__(self, endpoint: str) -> Callable[..., Any]: ...
    def _call(self, endpoint: str, *args: Any, **kwargs: Any) -> Any: ...
    def endpoints(self) -> List[str]:
        """The endpoint names (aliases included), sorted, fetched at connect."""
    def _endpoints(self) -> List[str]: ...
    @property
    def _transport(self) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> "ServiceClient": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...

class Buffer:
    """A read-only bytes-like result (``connect(..., buffers=True)``):
    read in place from the service's memory when it came out of line."""
    @property
    def lent(self) -> bool: ...
    def release(self) -> None: ...
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def __buffer__(self, flags: int) -> memoryview: ...

class MeshServiceClient:
    def __getattr__(self, endpoint: str) -> Callable[..., Any]: ...
    def _call(self, endpoint: str, *args: Any, **kwargs: Any) -> Any: ...
    def __enter__(self) -> "MeshServiceClient": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...

@overload
def connect(
    name: str,
    *ctor_args: Any,
    timeout: float = ...,
    tls: Optional[Dict[str, str]] = ...,
    mesh: str,
    **ctor_kwargs: Any,
) -> MeshServiceClient: ...
@overload
def connect(
    name: str,
    *ctor_args: Any,
    timeout: float = ...,
    buffers: bool = ...,
    address: Optional[str] = ...,
    tls: Optional[Dict[str, str]] = ...,
    mesh: None = ...,
    **ctor_kwargs: Any,
) -> ServiceClient: ...
class _GcReport(TypedDict):
    removed: List[str]  # one line per thing removed (registry entry, socket, segments)
    kept: List[str]  # one line per thing kept because its process lives

def gc() -> _GcReport:
    """Removes what killed services left behind (stale registry entries,
    control sockets, segment files): ``{"removed": [...], "kept": [...]}``,
    one line of text per item, as the runtime's ``GcReport``."""

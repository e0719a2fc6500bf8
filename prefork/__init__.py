"""prefork: a multi-process prefork server engine with the ``socketserver`` API.

``import prefork as socketserver`` is a drop-in for the standard library
module: the same server classes, mixins and request handlers, with the same
hooks.  See the README for the engine built on them.
"""

from typing import TYPE_CHECKING

from prefork.core.handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from prefork.core.mixins import (
    ForkingMixIn,
    ForkingTCPServer,
    ForkingUDPServer,
    ForkingUnixDatagramServer,
    ForkingUnixStreamServer,
    ThreadingMixIn,
    ThreadingTCPServer,
    ThreadingUDPServer,
    ThreadingUnixDatagramServer,
    ThreadingUnixStreamServer,
)
from prefork.core.server import (
    BaseServer,
    TCPServer,
    UDPServer,
    UnixDatagramServer,
    UnixStreamServer,
)

if TYPE_CHECKING:
    from prefork.engine import (
        BootError,
        PreforkMixIn,
        PreforkTCPServer,
        PreforkUDPServer,
        PreforkUnixDatagramServer,
        PreforkUnixStreamServer,
    )

__version__ = "0.1.0"

# The engine (master, workers, psutil...) loads on first use: a plain
# ``import prefork as socketserver`` stays as light as the standard library's,
# which keeps fork-per-request servers fast.
_ENGINE_NAMES = frozenset(
    {
        "BootError",
        "PreforkMixIn",
        "PreforkTCPServer",
        "PreforkUDPServer",
        "PreforkUnixDatagramServer",
        "PreforkUnixStreamServer",
    }
)


def __getattr__(name: str) -> object:
    if name in _ENGINE_NAMES:
        import prefork.engine

        return getattr(prefork.engine, name)
    raise AttributeError(f"module 'prefork' has no attribute {name!r}")


__all__ = [
    "BaseRequestHandler",
    "BaseServer",
    "BootError",
    "DatagramRequestHandler",
    "ForkingMixIn",
    "ForkingTCPServer",
    "ForkingUDPServer",
    "ForkingUnixDatagramServer",
    "ForkingUnixStreamServer",
    "PreforkMixIn",
    "PreforkTCPServer",
    "PreforkUDPServer",
    "PreforkUnixDatagramServer",
    "PreforkUnixStreamServer",
    "StreamRequestHandler",
    "TCPServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "ThreadingUnixDatagramServer",
    "ThreadingUnixStreamServer",
    "UDPServer",
    "UnixDatagramServer",
    "UnixStreamServer",
]

"""prefork: a multi-process prefork server engine with the ``socketserver`` API.

``import prefork as socketserver`` is a drop-in for the standard library
module: the same server classes, mixins and request handlers, with the same
hooks.  See the README for the engine built on them.
"""

from prefork.engine import (
    BootError,
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixDatagramServer,
    PreforkUnixStreamServer,
)
from prefork.handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from prefork.mixins import (
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
from prefork.server import BaseServer, TCPServer, UDPServer, UnixDatagramServer, UnixStreamServer

__version__ = "0.1.0"

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

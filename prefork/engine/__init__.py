"""The engine: a master process supervising worker processes that serve the inherited sockets.

Layer two of four (``core`` < ``engine`` < ``http`` < ``ops``): it builds on
:mod:`prefork.core` and knows nothing of HTTP beyond parking idle keep-alive
connections, nor of the command line.  The public names load lazily, so that
importing one module of the engine (the scoreboard, for ``prefork status``)
does not start the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefork.engine.master import BootError
    from prefork.engine.mixin import (
        PreforkMixIn,
        PreforkTCPServer,
        PreforkUDPServer,
        PreforkUnixDatagramServer,
        PreforkUnixStreamServer,
    )

#: Each public name and the module of the engine that defines it.
_HOMES = {
    "BootError": "master",
    "PreforkMixIn": "mixin",
    "PreforkTCPServer": "mixin",
    "PreforkUDPServer": "mixin",
    "PreforkUnixDatagramServer": "mixin",
    "PreforkUnixStreamServer": "mixin",
}

__all__ = [
    "BootError",
    "PreforkMixIn",
    "PreforkTCPServer",
    "PreforkUDPServer",
    "PreforkUnixDatagramServer",
    "PreforkUnixStreamServer",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'prefork.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"prefork.engine.{home}"), name)

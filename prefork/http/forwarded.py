"""Behind a proxy: the client's address and scheme from ``X-Forwarded-*``, if the peer is trusted.

``forwarded_allow_ips`` names the proxies whose headers count: addresses and
networks (``10.0.0.0/8``), comma-separated, or ``*`` for every peer; a peer on a
Unix socket is always trusted (only a local process can be one), as in gunicorn.
From a trusted peer:

* ``X-Forwarded-For`` gives ``REMOTE_ADDR``: the rightmost address in it that is
  not itself a trusted proxy (the leftmost ones are whatever the client wrote);
* ``X-Forwarded-Proto: https``, ``X-Forwarded-Protocol: ssl`` or
  ``X-Forwarded-Ssl: on`` (gunicorn's ``secure_scheme_headers``) give
  ``wsgi.url_scheme`` and ``HTTPS``; headers that contradict each other are a
  ``400``, since the request cannot be both.

From any other peer these headers stay in the environ as the client sent them,
and change nothing.
"""

from __future__ import annotations

import socket
from collections.abc import MutableMapping
from typing import Any

from prefork.engine.trusted import LOCAL_PROXIES, TrustedProxies

__all__ = ["DEFAULT_ALLOW", "SCHEME_HEADERS", "TrustedProxies", "apply_forwarded"]

#: gunicorn's default: the proxy on the same machine.
DEFAULT_ALLOW = LOCAL_PROXIES

#: Each scheme header (as an environ key) and the value that means HTTPS.
_PROTO, _PROTOCOL, _SSL = (
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_PROTOCOL",
    "HTTP_X_FORWARDED_SSL",
)
SCHEME_HEADERS = {_PROTO: "https", _PROTOCOL: "ssl", _SSL: "on"}

_FORWARDED_FOR = "HTTP_X_FORWARDED_FOR"
_SCHEME_KEYS = tuple(SCHEME_HEADERS.items())


def apply_forwarded(environ: MutableMapping[str, Any], proxies: TrustedProxies) -> str | None:
    """Rewrite ``environ`` from the forwarding headers of a peer that ``proxies`` trusts.

    Returns ``None``, or the reason for a ``400``.
    """
    get = environ.get
    forwarded_for = get(_FORWARDED_FOR)
    if (
        forwarded_for is None
        and get(_PROTO) is None
        and get(_PROTOCOL) is None
        and get(_SSL) is None
    ):
        return None  # the common case, every request from a trusted peer: keep it cheap
    schemes = [(get(key), secure) for key, secure in _SCHEME_KEYS]
    if forwarded_for:
        client = _client_address(forwarded_for, proxies)
        if client is not None:
            environ["REMOTE_ADDR"] = client
    secure = None
    for value, secure_value in schemes:
        if value is None:
            continue
        says_secure = value.strip().lower() == secure_value
        if secure is not None and secure != says_secure:
            return "contradictory X-Forwarded scheme headers"
        secure = says_secure
    if secure is True:
        environ["wsgi.url_scheme"] = "https"
        environ["HTTPS"] = "on"
    elif secure is False:
        environ["wsgi.url_scheme"] = "http"
        environ.pop("HTTPS", None)
    return None


def _client_address(forwarded_for: str, proxies: TrustedProxies) -> str | None:
    """The rightmost address of ``X-Forwarded-For`` that is not a trusted proxy.

    Stops at an entry that is not an address (``unknown``, garbage): what lies
    left of it cannot be told apart from what the client made up, so the last
    proxy's word (the entry right of it, if any) is kept.
    """
    chosen = None
    for entry in reversed(forwarded_for.split(",")):
        address = _address_of(entry.strip())
        if address is None:
            break
        chosen = address
        if address not in proxies:
            break
    return chosen


def _address_of(entry: str) -> str | None:
    """The IP address in an ``X-Forwarded-For`` entry (``1.2.3.4:80`` and ``[::1]:80`` too)."""
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    family = socket.AF_INET6 if ":" in entry else socket.AF_INET
    try:  # inet_pton checks and inet_ntop normalises, both in C: this runs per request
        return socket.inet_ntop(family, socket.inet_pton(family, entry))
    except (OSError, ValueError):
        return None

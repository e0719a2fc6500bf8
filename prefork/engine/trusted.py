"""Lists of trusted peers: addresses and networks, as the proxy settings name them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from prefork.errors import ConfigError

__all__ = ["LOCAL_PROXIES", "TrustedProxies"]

#: The default list of both settings, as in gunicorn: a proxy on the same machine.
LOCAL_PROXIES = "127.0.0.1,::1"

#: Peers remembered by :class:`TrustedProxies` (a server sees few distinct proxies).
_CACHE_LIMIT = 1024

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Peers named by a list of addresses and networks, or ``*`` for all.

    ``forwarded_allow_ips`` (whose ``X-Forwarded-*`` headers are believed) and
    ``proxy_allow_ips`` (who may send a PROXY protocol header) are such lists.
    A bad entry is a :class:`~prefork.errors.ConfigError` naming it.
    """

    def __init__(self, spec: str | Iterable[str] | None) -> None:
        items = spec.split(",") if isinstance(spec, str) else list(spec or ())
        items = [item.strip() for item in items if item.strip()]
        self.everyone = "*" in items
        self.networks: list[_Network] = []
        for item in items:
            if item == "*":
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"{item!r} is not an IP address or network") from None
        self._known: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return self.everyone or bool(self.networks)

    def trusts_peer(self, peer: Any) -> bool:
        """Whether a connection from ``peer`` (its client address) comes from a trusted proxy.

        A ``(host, port)`` tuple is looked up; any other address is a Unix
        socket's, trusted unless nobody is.
        """
        if isinstance(peer, tuple):
            return bool(peer) and str(peer[0]) in self
        return bool(self)

    def __contains__(self, address: object) -> bool:
        """Whether ``address`` (an IP address as text) is a trusted proxy."""
        if not isinstance(address, str):
            return False
        known = self._known.get(address)
        if known is None:
            known = self.everyone or _in_networks(address, self.networks)
            if len(self._known) < _CACHE_LIMIT:
                self._known[address] = known
        return known


def _in_networks(address: str, networks: list[_Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return any(ip in network for network in networks)

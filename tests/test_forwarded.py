"""prefork.http.forwarded: which peers' X-Forwarded-* headers count, and what they change."""

from __future__ import annotations

from typing import Any

import pytest

from prefork.errors import ConfigError
from prefork.http.forwarded import DEFAULT_ALLOW, TrustedProxies, apply_forwarded

PROXY = ("127.0.0.1", 40000)


def environ(**headers: str) -> dict[str, Any]:
    base: dict[str, Any] = {"REMOTE_ADDR": PROXY[0], "wsgi.url_scheme": "http"}
    base.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    return base


def test_addresses_networks_and_everyone() -> None:
    proxies = TrustedProxies("10.0.0.0/8, 192.168.1.7 ,::1")
    assert "10.200.3.4" in proxies and "192.168.1.7" in proxies and "::1" in proxies
    assert "192.168.1.8" not in proxies and "11.0.0.1" not in proxies
    assert "::ffff:10.0.0.1" in proxies, "an IPv4 peer seen on a dual-stack socket"
    assert "not-an-ip" not in proxies and "" not in proxies
    assert "8.8.8.8" in TrustedProxies("*")
    assert "127.0.0.1" in TrustedProxies(DEFAULT_ALLOW)
    assert not TrustedProxies("") and not TrustedProxies(None)


def test_a_bad_entry_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.300'"):
        TrustedProxies("127.0.0.1,10.0.0.300")


def test_the_client_is_the_rightmost_address_that_is_not_a_proxy() -> None:
    proxies = TrustedProxies("127.0.0.1,10.0.0.0/8")
    env = environ(x_forwarded_for="6.6.6.6, 203.0.113.9, 10.1.1.1")
    assert apply_forwarded(env, proxies) is None
    # 6.6.6.6 is what the client claimed; 203.0.113.9 is who reached the first proxy.
    assert env["REMOTE_ADDR"] == "203.0.113.9"


def test_only_proxies_in_the_chain_gives_the_leftmost() -> None:
    env = environ(x_forwarded_for="10.0.0.2,10.0.0.3")
    apply_forwarded(env, TrustedProxies("127.0.0.1,10.0.0.0/8"))
    assert env["REMOTE_ADDR"] == "10.0.0.2"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("198.51.100.4:5555", "198.51.100.4"),
        ("unknown", PROXY[0]),
        ("garbage, 198.51.100.4", "198.51.100.4"),
    ],
)
def test_ports_brackets_and_garbage(header: str, expected: str) -> None:
    env = environ(x_forwarded_for=header)
    apply_forwarded(env, TrustedProxies(DEFAULT_ALLOW))
    assert env["REMOTE_ADDR"] == expected


def test_which_peers_are_trusted() -> None:
    proxies = TrustedProxies(DEFAULT_ALLOW)
    assert proxies.trusts_peer(PROXY) and proxies.trusts_peer(("::1", 1, 0, 0))
    assert not proxies.trusts_peer(("203.0.113.9", 1))
    assert not TrustedProxies("10.0.0.1").trusts_peer(PROXY)


@pytest.mark.parametrize(
    "headers",
    [{"x_forwarded_proto": "https"}, {"x_forwarded_protocol": "ssl"}, {"x_forwarded_ssl": "on"}],
)
def test_scheme_headers_say_https(headers: dict[str, str]) -> None:
    env = environ(**headers)
    apply_forwarded(env, TrustedProxies(DEFAULT_ALLOW))
    assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"


def test_a_proxy_that_says_http_overrides_tls_to_itself() -> None:
    env = environ(x_forwarded_proto="http")
    env.update({"wsgi.url_scheme": "https", "HTTPS": "on"})
    apply_forwarded(env, TrustedProxies(DEFAULT_ALLOW))
    assert env["wsgi.url_scheme"] == "http" and "HTTPS" not in env


def test_contradictory_scheme_headers_are_refused() -> None:
    env = environ(x_forwarded_proto="https", x_forwarded_ssl="off")
    assert apply_forwarded(env, TrustedProxies(DEFAULT_ALLOW)) is not None


def test_a_unix_socket_peer_is_trusted_unless_nobody_is() -> None:
    assert TrustedProxies(DEFAULT_ALLOW).trusts_peer("")
    assert TrustedProxies("10.0.0.1").trusts_peer(b"\0abstract")
    assert not TrustedProxies("").trusts_peer("")

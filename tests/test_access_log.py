"""prefork.http.access_log: gunicorn's atoms, rendered for one request."""

from __future__ import annotations

import logging
import re

import pytest

from prefork.http.access_log import DEFAULT_FORMAT, AccessLog


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="prefork.access")
    return caplog


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "prefork.access"]


def test_combined_format_with_nothing_known(records: pytest.LogCaptureFixture) -> None:
    AccessLog().log({"REQUEST_METHOD": "GET", "RAW_URI": "/", "SERVER_PROTOCOL": "HTTP/1.0"},
                    204, 0, [], 0.0)  # fmt: skip
    (message,) = messages(records)
    assert re.fullmatch(r'- - - \[\S+ [+-]\d{4}\] "GET / HTTP/1\.0" 204 - "-" "-"', message), (
        message
    )


@pytest.mark.parametrize(
    ("authorization", "user"),
    [("Basic Ym9iOnB3", "bob"), ("Basic !!!", "-"), ("Bearer abc", "-"), ("Basic OnB3", "-")],
)
def test_the_user_of_basic_authentication(
    records: pytest.LogCaptureFixture, authorization: str, user: str
) -> None:
    AccessLog("%(u)s").log({"HTTP_AUTHORIZATION": authorization}, 200, 1, [], 0.0)
    assert messages(records)[-1] == user


def test_header_and_environment_atoms(
    records: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOYMENT", "blue")
    AccessLog("%({x-id}i)s %({Content-Type}o)s %({missing}o)s %({DEPLOYMENT}e)s %(B)s %(b)s").log(
        {"HTTP_X_ID": "7"}, 200, 0, [("content-type", "text/html")], 0.0
    )
    assert messages(records)[-1] == "7 text/html - blue 0 -"


def test_a_bad_format_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="format"):
        AccessLog("%(h)d")
    assert AccessLog(DEFAULT_FORMAT).format == DEFAULT_FORMAT

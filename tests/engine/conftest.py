"""Fixtures that start servers and load, and always clean them up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .harness import LoadGenerator, ServerProcess


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """``start_server(*app_args)`` starts the app; every server is killed and reaped after."""
    started: list[ServerProcess] = []

    def start(*args: Any, name: str = "server") -> ServerProcess:
        server = ServerProcess(*args, name=name)
        started.append(server)
        return server.start()

    yield start
    errors = []
    for server in reversed(started):
        try:
            server.close()
        except Exception as exc:  # close them all, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def start_load() -> Iterator[Callable[..., LoadGenerator]]:
    """``start_load(address, **options)`` starts client threads; all are stopped after."""
    started: list[LoadGenerator] = []

    def start(address: Any, **options: Any) -> LoadGenerator:
        load = LoadGenerator(address, **options)
        started.append(load)
        return load.start()

    yield start
    for load in started:
        load.stop()

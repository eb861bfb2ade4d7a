"""Fixtures: stub policy servers on 127.0.0.1 (free ports), stopped after each test."""

from __future__ import annotations

import numpy as np
import pytest

from stub_server import StubServer


@pytest.fixture
def stub():
    """`stub(**kwargs)` starts a StubServer (kwargs as StubServer's)."""
    servers = []

    def start(**kwargs) -> StubServer:
        server = StubServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def observation(state_dim: int = 5) -> dict:
    return {"state": np.arange(state_dim, dtype=np.float32), "language_instruction": "go"}


@pytest.fixture
def obs():
    return observation()

"""A Bastion server in front of the fake upstream, shared by a test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer, run_bastion
from tests.integration.gateway_policy import ENV, policy


@pytest.fixture(scope="module")
def server(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BastionServer]:
    with run_bastion(policy(upstream), tmp_path_factory.mktemp("bastion"), env=ENV) as srv:
        yield srv

"""Fixtures of the cluster tests (tests/cluster/harness.py builds the bed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster.harness import Cluster, isolated


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest) -> Iterator[Callable[..., Cluster]]:
    """Builds Cluster(**options) (at most one per test); its processes' logs
    are printed when the test fails, and it is torn down whatever happens."""
    why = isolated()
    if why:
        pytest.skip(f"cluster tests: {why}")
    built: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        bed = Cluster(**options)
        built.append(bed)
        try:
            bed.start()
        except BaseException:
            bed.print_logs()
            raise
        return bed

    try:
        yield make
    finally:
        failed = any(
            getattr(getattr(request.node, f"report_{when}", None), "failed", False)
            for when in ("setup", "call")
        )
        for bed in built:
            if failed:
                bed.print_logs(120)
            bed.close()

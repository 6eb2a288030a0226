"""tests/chart: the Helm chart, rendered by the pinned helm (never skipped)."""

from __future__ import annotations

import pytest

from tests.chart.helm import HelmError, helm_binary


@pytest.fixture(scope="session", autouse=True)
def helm() -> str:
    try:
        return helm_binary()
    except HelmError as e:
        pytest.fail(f"chart tests need helm: {e}", pytrace=False)

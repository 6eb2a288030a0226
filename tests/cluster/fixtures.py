"""pytest plugin: the session-scoped ``cluster`` fixture.

Load it from the root conftest with ``pytest_plugins = ["tests.cluster.fixtures"]``.

HELIXRUN_TEST_CLUSTER selects the backend:

* ``local`` (default): tests/cluster/controlplane.ControlPlane, the same code
  as ``make cluster``; builds the binaries first if needed (tests/cluster/build.sh)
  and FAILS the tests (never skips) when they cannot be built or started.
* ``existing``: reuse the control plane of ``make cluster`` recorded in
  ``${HELIXRUN_CLUSTER_STATE:-.cluster}/state.json`` (not stopped afterwards).
* ``kind``: tests/cluster/kind.KindCluster (needs Docker, kind, kubectl).

Every backend yields an object with ``kubeconfig``, ``server``, ``bin_dir``,
``kubectl(*args)``, ``stop()``.
"""

from __future__ import annotations

import os

import pytest

from .controlplane import ClusterError, ControlPlane, bin_dir_for_build, running_control_plane

MARKER = "cluster: needs the integration-test Kubernetes control plane (tests/cluster)"

# One cluster per pytest session, even when this module is registered both as a
# plugin and through tests/cluster/conftest.py (two fixture definitions).
_SHARED: dict[str, object] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", MARKER)
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still run in CI)")


def make_cluster(mode: str | None = None):
    """Create and start the backend selected by HELIXRUN_TEST_CLUSTER; returns (cluster, owned)."""
    mode = (mode or os.environ.get("HELIXRUN_TEST_CLUSTER") or "local").lower()
    if mode == "kind":
        from .kind import KindCluster

        return KindCluster().start(), True
    if mode == "existing":
        state = os.environ.get("HELIXRUN_CLUSTER_STATE", ".cluster")
        cp = running_control_plane(state)
        if cp is None:
            raise ClusterError(f"HELIXRUN_TEST_CLUSTER=existing but no control plane runs in {state} (make cluster)")
        return cp, False
    if mode != "local":
        raise ClusterError(f"unknown HELIXRUN_TEST_CLUSTER={mode!r} (local | existing | kind)")
    bin_dir = bin_dir_for_build(build=os.environ.get("HELIXRUN_CLUSTER_NO_BUILD") != "1")
    return ControlPlane(bin_dir=bin_dir, die_with_parent=True).start(), True


@pytest.fixture(scope="session")
def cluster():
    if "cluster" in _SHARED:
        yield _SHARED["cluster"]
        return
    try:
        c, owned = make_cluster()
    except ClusterError as e:
        pytest.fail(f"integration-test cluster could not be started: {e}", pytrace=False)
    _SHARED["cluster"] = c
    try:
        yield c
    finally:
        _SHARED.pop("cluster", None)
        if owned:
            c.stop()

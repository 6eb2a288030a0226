# The `cluster` fixture and the `cluster` marker for the tests in this folder.
# Other suites get them from the root conftest: pytest_plugins = ["tests.cluster.fixtures"]
# (pytest only honours pytest_plugins in the rootdir conftest).
from tests.cluster.fixtures import cluster, pytest_configure  # noqa: F401

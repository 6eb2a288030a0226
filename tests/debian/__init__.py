"""Programs and data the tests and `make demo` take from Debian's archive: pinned, fetched without root.

    python -m tests.debian fetch        # `make debian-packages`: download and unpack what is missing
    python -m tests.debian path NAME    # where NAME (prometheus, promtool, wordnet) is; exit 1 if missing

Each package is unpacked with `dpkg -x` into ${HELIXRUN_CACHE:-~/.cache/helixrun}/debian/<package>_<version>/,
the cache the control plane's binaries share (tests/cluster/build.sh). `apt-get update` and `apt-get download`
run on the machine's apt sources with package lists of their own (a temporary folder in that cache, gone
when the fetch ends), so neither root nor the machine's apt state is involved.

Why Debian's packages rather than a Go build of github.com/prometheus/prometheus: bookworm's 2.42 is the
Prometheus the observability tests were written against, and it is far cheaper. Measured on this 2-core
machine, shared with other builds (load average 15-17):

    Debian (this module), cold: 26 MB of .debs and 26 MB of package lists, 123 MB unpacked;
        16-35 s wall, 10 s CPU. Warm (every folder complete): 0.3 s, no apt at all.
    Go, cold, module v0.42.0 (= 2.42) with prometheus' klog replaces, CGO_ENABLED=0, -trimpath -s -w:
        1.8 GB of modules (2 min) and 1 GB of build cache, 11 CPU-minutes to compile (about 6 min wall on
        an idle 2-core machine, 64 min measured under that load), 166 MB of binaries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MAKE_TARGET = "make debian-packages"


@dataclass(frozen=True)
class Package:
    name: str
    version: str  # exact: a new Debian revision is a deliberate bump here, and a fresh cache folder

    @property
    def folder(self) -> Path:
        return cache_root() / "debian" / f"{self.name}_{self.version.replace(':', '%3a')}"

    def complete(self) -> bool:
        return (self.folder / ".complete").is_file()


PROMETHEUS = Package("prometheus", "2.42.0+ds-5+deb12u1")
WORDNET = Package("wordnet-base", "1:3.0-37")
PACKAGES = (PROMETHEUS, WORDNET)


@dataclass(frozen=True)
class Item:
    """One program or data folder inside an unpacked package; `env` names a path that overrides the cache."""

    package: Package
    path: str
    env: str


ITEMS = {
    "prometheus": Item(PROMETHEUS, "usr/bin/prometheus", "HELIXRUN_PROMETHEUS"),
    "promtool": Item(PROMETHEUS, "usr/bin/promtool", "HELIXRUN_PROMTOOL"),
    # The variable the trainer itself reads (helixrun_trainer.evaluation.text).
    "wordnet": Item(WORDNET, "usr/share/wordnet", "HELIXRUN_WORDNET_DIR"),
}


def cache_root() -> Path:
    return Path(os.environ.get("HELIXRUN_CACHE") or Path.home() / ".cache" / "helixrun")


class Missing(LookupError):
    pass


def find(name: str) -> Path:
    """The path of `name`: the environment's override, else the fetched package; Missing says how to get it."""
    item = ITEMS[name]
    if os.environ.get(item.env):
        path = Path(os.environ[item.env])
        if not path.exists():
            raise Missing(f"{item.env}={path} does not exist")
        return path
    path = item.package.folder / item.path
    if not (item.package.complete() and path.exists()):
        raise Missing(f"{name} from Debian's {item.package.name} {item.package.version} is not in {item.package.folder}:"
                      f" run `{MAKE_TARGET}` (or set {item.env})")
    return path


def require(name: str) -> str:
    """The path of `name` for a test, or the test fails (never skips) saying how to get it."""
    try:
        return str(find(name))
    except Missing as exc:
        missing = str(exc)
    import pytest

    pytest.fail(missing, pytrace=False)  # outside `except`: the message once, not chained to the lookup's

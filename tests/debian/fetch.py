"""Download the pinned packages with apt on private package lists and unpack them with dpkg -x; no root."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from tests.debian import MAKE_TARGET, PACKAGES, WORDNET, Package, cache_root


class FetchError(RuntimeError):
    pass


@contextmanager
def _locked(path: Path):
    """One fetch at a time per cache (CI and a developer, or two make targets); the others wait, then reuse."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _apt(state: Path, *args: str, cwd: Path | None = None) -> None:
    """apt-get with its lists, cache and status in `state`: the machine's sources, none of its apt state."""
    options = [f"-oDir::State={state}", f"-oDir::State::Lists={state / 'lists'}",
               f"-oDir::State::status={state / 'status'}", f"-oDir::Cache={state / 'cache'}",
               # As root apt would download as _apt, who cannot write into root's cache; others stay themselves.
               "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root"]
    proc = subprocess.run(["apt-get", "-q", *options, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(f"apt-get {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")


def _download(packages: list[Package], into: Path) -> None:
    state = into / "apt"  # the package lists (26 MB) go with the downloads when the fetch ends
    for folder in (state / "lists" / "partial", state / "cache" / "archives" / "partial"):
        folder.mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    _apt(state, "update")
    try:
        _apt(state, "download", *(f"{p.name}={p.version}" for p in packages), cwd=into)
    except FetchError as exc:
        pins = ", ".join(f"{p.name} {p.version}" for p in packages)
        raise FetchError(f"{exc}\ntests/debian/__init__.py pins {pins}; if the machine's apt sources no longer "
                         "offer that version (`apt-cache policy NAME` lists theirs), bump the pin") from exc


def _finish(package: Package, unpacked: Path) -> None:
    if package is WORDNET:  # NLTK's reader needs the lexnames table Debian's package leaves out
        from helixrun_trainer.evaluation.text import write_lexnames

        write_lexnames(unpacked / "usr" / "share" / "wordnet")


def fetch(packages: Iterable[Package] = PACKAGES) -> None:
    """Every package unpacked into its cache folder; those already complete are left alone."""
    missing = [p for p in packages if not p.complete()]
    if not missing:
        return
    root = cache_root() / "debian"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".fetch.lock"):
        missing = [p for p in missing if not p.complete()]
        if not missing:
            return
        start = time.monotonic()
        with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
            debs = Path(tmp)
            _download(missing, debs)
            for package in missing:
                (deb,) = debs.glob(f"{package.name}_*.deb")
                unpacked = debs / package.folder.name
                subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
                _finish(package, unpacked)
                (unpacked / ".complete").touch()
                shutil.rmtree(package.folder, ignore_errors=True)  # a half-finished earlier try
                unpacked.rename(package.folder)
        print(f"{MAKE_TARGET}: fetched {', '.join(f'{p.name} {p.version}' for p in missing)} into {root} "
              f"in {time.monotonic() - start:.1f}s", file=sys.stderr)

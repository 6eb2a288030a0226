"""Build helixrun's images on a machine with no container registry, and load them into a node.

    python -m tests.images.build                 # `make images`: both images, then the real node if one is up
    python -m tests.images.build --wheelhouse    # `make setup`: download every wheel once

One implementation for `make images`, the image tests and the kind path:

    images = build_images(tag="dev", which=("operator",))
    load_into_kind("helixrun", images)                  # or load_into_containerd(socket, list(images.values()))

What it does, each step skipped when its result is already there:
1. Docker: installs Debian's docker.io where `dockerd` is missing and starts dockerd
   when it is not answering (both need root). Builds use the daemon's BuildKit through
   a client that can: Debian's 20.10 client with DOCKER_BUILDKIT=1, or one with buildx.
2. The base: the Dockerfiles' default BASE_IMAGE when present or pullable; otherwise a
   Debian bookworm made here (debootstrap --variant=minbase from the machine's apt
   mirror, `docker import`), built once per machine.
3. The wheels: `make setup` downloads every wheel the venv and the images need into
   the wheelhouse (pip's HTTP cache cannot be relied on: it keeps nothing where the
   index's responses carry no cache headers). The builds read it over HTTP from a
   server on the Docker bridge, so they download nothing and keep no wheel.
4. `docker build` of each image; BuildKit's layer cache makes an unchanged build a no-op.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"operator": REPO / "dockerfiles" / "operator.Dockerfile",
               "trainer": REPO / "dockerfiles" / "trainer.Dockerfile"}
REPOSITORIES = {"operator": "helixrun/operator", "trainer": "helixrun/trainer"}
CACHE = Path(os.environ.get("HELIXRUN_CACHE") or Path.home() / ".cache" / "helixrun")
WHEELHOUSE = CACHE / "wheelhouse"
# Everything `make setup` installs plus what the images add (the `qlora` extra, pip and setuptools).
WHEELHOUSE_REQUIREMENTS = ["-r", "dockerfiles/requirements-build.txt", "-r", ".ci/requirements-test.txt",
                           "./operator[operator,cli]", "./trainer[qlora]"]
LOCAL_BASE = "helixrun/debian:bookworm-minbase"
DOCKER_SOCKET = "/var/run/docker.sock"
# The builds reach the wheelhouse as http://wheelhouse:PORT/: a fixed URL keeps BuildKit's cache keys stable.
WHEELHOUSE_HOST = "wheelhouse"
WHEELHOUSE_PORT = int(os.environ.get("HELIXRUN_WHEELHOUSE_PORT", "3141"))
DOCKER_START_TIMEOUT = 60
IMAGE_LABEL = "org.opencontainers.image.source=https://github.com/helixrun/helixrun"  # both Dockerfiles set it
BUILD_CACHE_KEEP = "20GB"  # the current images' layers and about one older set


class ImageBuildError(RuntimeError):
    pass


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, **kwargs)
    except subprocess.CalledProcessError as e:
        detail = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        raise ImageBuildError(f"{shlex.join(cmd[:3])} ... exited {e.returncode}: {detail.strip()[-2000:]}") from None


def _as_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(f"{what} needs root (run `make images` as root, or do it yourself first)")


# -- 1. Docker ----------------------------------------------------------------------------------


def _apt_install(*packages: str) -> None:
    _as_root(f"installing {', '.join(packages)} from Debian")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env, capture_output=True)


@functools.cache
def docker() -> str:
    """A docker client that builds with the daemon's BuildKit, the daemon running."""
    if not shutil.which("dockerd"):
        _apt_install("docker.io")
    candidates = [c for c in dict.fromkeys([shutil.which("docker"), "/usr/bin/docker"]) if c and Path(c).exists()]
    if not candidates:
        raise ImageBuildError("dockerd is here but no docker client: reinstall Debian's docker.io")
    if not _daemon_answers(candidates[0]):
        _start_dockerd(candidates[0])
    for client in candidates:
        if _builds_with_buildkit(client):
            return client
    raise ImageBuildError(f"no docker client here builds with BuildKit ({', '.join(candidates)}): "
                          "install Debian's docker.io (its 20.10 client needs no buildx) or docker-buildx")


def _daemon_answers(client: str) -> bool:
    return subprocess.run([client, "info"], capture_output=True).returncode == 0


def _start_dockerd(client: str) -> None:
    _as_root("starting dockerd")
    log = CACHE / "dockerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"images: starting dockerd (log: {log})", file=sys.stderr)
    with open(log, "ab") as out:
        # Its own session: the daemon outlives this build, so later builds reuse its cache.
        daemon = subprocess.Popen(["dockerd", "--host", f"unix://{DOCKER_SOCKET}"], stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + DOCKER_START_TIMEOUT
    while not _daemon_answers(client):
        if daemon.poll() is not None or time.monotonic() > deadline:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:])
            raise ImageBuildError(f"dockerd {'exited' if daemon.poll() is not None else 'did not answer'}; "
                                  f"the end of {log}:\n{tail}")
        time.sleep(0.5)


def _builds_with_buildkit(client: str) -> bool:
    """buildx present, or a client older than 23 whose `build` uses the daemon's BuildKit itself."""
    if subprocess.run([client, "buildx", "version"], capture_output=True).returncode == 0:
        return True
    out = subprocess.run([client, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True)
    major = re.match(r"\d+", out.stdout.strip())
    return bool(major) and int(major.group()) < 23


def image_exists(ref: str) -> bool:
    return subprocess.run([docker(), "image", "inspect", ref], capture_output=True).returncode == 0


# -- 2. The base --------------------------------------------------------------------------------


def default_base() -> str:
    from tests.images.dockerfile import parse

    bases = {parse(path).args["BASE_IMAGE"] for path in DOCKERFILES.values()}
    if len(bases) != 1:
        raise ImageBuildError(f"the Dockerfiles disagree on BASE_IMAGE: {sorted(bases)}")
    return bases.pop()


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The first apt source of this machine that serves Debian bookworm."""
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and "bookworm" in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                m = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", line + " ")
                if m:
                    return m.group(1)
    raise ImageBuildError(f"no apt source for Debian bookworm in {apt_dir}: debootstrap needs a mirror")


def base_image() -> str:
    """The public base if it is here or can be pulled, else the Debian made on this machine."""
    public = default_base()
    if image_exists(public) or subprocess.run([docker(), "pull", public], capture_output=True).returncode == 0:
        return public
    if not image_exists(LOCAL_BASE):
        make_local_base()
    return LOCAL_BASE


def make_local_base() -> None:
    _as_root("making a Debian base with debootstrap")
    if not shutil.which("debootstrap"):
        _apt_install("debootstrap")
    mirror = debian_mirror()
    print(f"images: no registry has {default_base()}; making {LOCAL_BASE} with debootstrap from {mirror}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as rootfs:
        _run(["debootstrap", "--variant=minbase", "bookworm", rootfs, mirror], capture_output=True)
        # As the public slim images do: no package lists or package cache in the base.
        for leftover in ("var/lib/apt/lists", "var/cache/apt"):
            shutil.rmtree(Path(rootfs, leftover))
            Path(rootfs, leftover).mkdir()
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        _run([docker(), "import", "-", LOCAL_BASE], stdin=tar.stdout, capture_output=True)
        if tar.wait() != 0:
            raise ImageBuildError(f"tar of the debootstrapped {rootfs} failed")


# -- 3. The wheels ------------------------------------------------------------------------------


def fill_wheelhouse(python: str = sys.executable) -> Path:
    """Download every wheel `make setup` and the images install; a no-op when the inputs did not change."""
    inputs = [REPO / p for p in ("operator/pyproject.toml", "trainer/pyproject.toml", ".ci/requirements-test.txt",
                                 "dockerfiles/requirements-build.txt")]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in inputs) + repr(WHEELHOUSE_REQUIREMENTS).encode()).hexdigest()
    stamp = WHEELHOUSE / ".complete"
    if stamp.exists() and stamp.read_text() == key:
        return WHEELHOUSE
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    _run([python, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(WHEELHOUSE),
          *WHEELHOUSE_REQUIREMENTS], cwd=REPO, stdout=sys.stderr)  # stdout is the path alone (make setup reads it)
    stamp.write_text(key)
    return WHEELHOUSE


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge (docker0), where build steps reach the host."""
    out = _run([docker(), "network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}"],
               capture_output=True, text=True)
    (config,) = json.loads(out.stdout)
    # dockerd names no gateway when it picked the bridge's address itself: the subnet's first host.
    return config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


@contextlib.contextmanager
def serve_wheelhouse(directory: Path):
    """The wheelhouse over HTTP on the Docker bridge, where build steps reach it; yields the build args."""
    gateway = bridge_gateway()
    handler = functools.partial(_QuietHandler, directory=str(directory))
    try:
        server = http.server.ThreadingHTTPServer((gateway, WHEELHOUSE_PORT), handler)
    except OSError as e:
        raise ImageBuildError(f"cannot serve the wheelhouse on {gateway}:{WHEELHOUSE_PORT} ({e}); "
                              "another build running? HELIXRUN_WHEELHOUSE_PORT picks another port") from None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        args = ["--add-host", f"{WHEELHOUSE_HOST}:{gateway}"]
        for name, value in wheelhouse_build_args().items():
            args += ["--build-arg", f"{name}={value}"]
        yield args
    finally:
        server.shutdown()
        server.server_close()


def wheelhouse_build_args() -> dict[str, str]:
    """The Dockerfiles' PIP_* build arguments (pip reads them from the environment): the wheelhouse only."""
    return {"PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": f"http://{WHEELHOUSE_HOST}:{WHEELHOUSE_PORT}/",
            "PIP_TRUSTED_HOST": WHEELHOUSE_HOST}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        pass


# -- 4. The images ------------------------------------------------------------------------------


def build_images(tag: str = "dev", which: tuple[str, ...] = ("operator", "trainer")) -> dict[str, str]:
    """Build the images from the repository root; returns {name: image reference}."""
    client = docker()
    base = base_image()
    wheelhouse = fill_wheelhouse()
    images = {}
    with serve_wheelhouse(wheelhouse) as wheel_args:
        for name in which:
            ref = f"{REPOSITORIES[name]}:{tag}"
            log = CACHE / f"build-{name}.log"
            print(f"images: building {ref} from {base} (log: {log})", file=sys.stderr)
            with open(log, "w") as out:
                proc = subprocess.run([client, "build", "--progress=plain", "-f", str(DOCKERFILES[name]),
                                       "--build-arg", f"BASE_IMAGE={base}", *wheel_args, "-t", ref, str(REPO)],
                                      env=os.environ | {"DOCKER_BUILDKIT": "1"}, stdout=out, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
                raise ImageBuildError(f"docker build of {ref} exited {proc.returncode}; the end of {log}:\n{tail}")
            images[name] = ref
    prune(client)
    return images


def prune(client: str) -> None:
    """Each dependency change leaves a 6 GB layer behind: keep BuildKit's cache and our images bounded."""
    _run([client, "image", "prune", "--force", "--filter", f"label={IMAGE_LABEL}"], capture_output=True)
    _run([client, "builder", "prune", "--force", "--keep-storage", BUILD_CACHE_KEEP], capture_output=True)


# -- Loading into nodes -------------------------------------------------------------------------


def load_into_containerd(address: str, refs: list[str]) -> None:
    """`docker save | ctr import` into the containerd at `address` (the namespace the kubelet's CRI uses).

    An image the store already holds (the same image ID: the CRI names each image by its config digest)
    is not imported again, and image IDs no name points to any more are dropped, so the real node's
    shared store keeps one version of each image."""
    ctr = shutil.which("ctr")
    if not ctr:
        raise ImageBuildError("ctr not found: it comes with Debian's containerd package")
    ctr = [ctr, "--address", address, "-n", "k8s.io"]
    client = docker()
    held = set(_run([*ctr, "images", "list", "--quiet"], capture_output=True, text=True).stdout.split())
    ids = {ref: _run([client, "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True,
                     text=True).stdout.strip() for ref in refs}
    missing = [ref for ref in refs if ids[ref] not in held]
    if missing:
        save = subprocess.Popen([client, "save", *missing], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _run([*ctr, "images", "import", "-"], stdin=save.stdout, capture_output=True)
        finally:
            save.stdout.close()
            if save.wait() != 0:
                raise ImageBuildError(f"docker save {' '.join(missing)} failed: {save.stderr.read().decode()[-2000:]}")
    listing = _run([*ctr, "images", "list"], capture_output=True, text=True).stdout.splitlines()[1:]
    named = {row.split()[2] for row in listing if not row.startswith("sha256:")}
    stale = [row.split()[0] for row in listing if row.startswith("sha256:") and row.split()[2] not in named]
    if stale:
        _run([*ctr, "images", "remove", *stale], capture_output=True)


def real_node_containerd(state_dir: Path) -> str | None:
    """The containerd socket of the test cluster's real node, if one is up (`python -m tests.cluster up --real-node`)."""
    state = Path(state_dir) / "state.json"
    if not state.exists():
        return None
    return (json.loads(state.read_text()).get("real_node") or {}).get("containerd_address")


def load_into_kind(cluster_name: str, images: dict[str, str]) -> None:
    kind = shutil.which("kind")
    if not kind:
        raise ImageBuildError("kind not found on PATH: the kind path needs it")
    for ref in images.values():
        _run([kind, "load", "docker-image", ref, "--name", cluster_name], capture_output=True)


def chart_values(images: dict[str, str]) -> dict:
    """Chart values that run the loaded images (never pulled: the node has them)."""
    values: dict = {}
    if "operator" in images:
        repo, _, tag = images["operator"].rpartition(":")
        values["operator"] = {"image": {"repository": repo, "tag": tag, "pullPolicy": "Never"}}
    if "trainer" in images:
        repo, _, tag = images["trainer"].rpartition(":")
        values["trainer"] = {"image": {"repository": repo, "tag": tag}}
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.images.build", description=__doc__.splitlines()[0])
    parser.add_argument("--wheelhouse", action="store_true", help="only download the wheels (make setup)")
    parser.add_argument("--tag", default="dev")
    parser.add_argument("--cluster-state", type=Path, default=Path(os.environ.get("CLUSTER_STATE", ".cluster")),
                        help="test cluster state dir; its real node gets the images")
    args = parser.parse_args(argv)
    try:
        if args.wheelhouse:
            print(fill_wheelhouse())
            return 0
        started = time.monotonic()
        images = build_images(args.tag)
        print(f"built {', '.join(images.values())} in {time.monotonic() - started:.0f} s")
        address = real_node_containerd(args.cluster_state)
        if address:
            started = time.monotonic()
            load_into_containerd(address, list(images.values()))
            print(f"loaded into the real node's containerd ({address}) in {time.monotonic() - started:.0f} s")
    except ImageBuildError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

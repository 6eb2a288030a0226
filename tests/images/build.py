"""Build the images and hand them to a kind cluster (HELIXRUN_TEST_CLUSTER=kind only).

Not runnable on the CI machine (no Docker). The kind backend uses it as:

    images = build_images(tag="dev", which=("operator",))
    load_into_kind("helixrun", images)
    install_chart(kubeconfig, "helixrun", "helixrun-system", chart_values(images))
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"operator": REPO / "dockerfiles" / "operator.Dockerfile",
               "trainer": REPO / "dockerfiles" / "trainer.Dockerfile"}
REPOSITORIES = {"operator": "ghcr.io/helixrun/operator", "trainer": "ghcr.io/helixrun/trainer"}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise RuntimeError(f"{tool} not found on PATH: the kind path needs Docker and kind")
    return path


def build_images(tag: str = "dev", which: tuple[str, ...] = ("operator", "trainer")) -> dict[str, str]:
    """`docker build` each image from the repository root; returns {name: image reference}."""
    docker = _need("docker")
    images = {}
    for name in which:
        ref = f"{REPOSITORIES[name]}:{tag}"
        subprocess.run([docker, "build", "-f", str(DOCKERFILES[name]), "-t", ref, str(REPO)], check=True)
        images[name] = ref
    return images


def load_into_kind(cluster_name: str, images: dict[str, str]) -> None:
    kind = _need("kind")
    for ref in images.values():
        subprocess.run([kind, "load", "docker-image", ref, "--name", cluster_name], check=True)


def chart_values(images: dict[str, str]) -> dict:
    """Chart values that run the loaded images (never pulled: kind has them)."""
    values: dict = {}
    if "operator" in images:
        repo, _, tag = images["operator"].rpartition(":")
        values["operator"] = {"image": {"repository": repo, "tag": tag, "pullPolicy": "Never"}}
    if "trainer" in images:
        repo, _, tag = images["trainer"].rpartition(":")
        values["trainer"] = {"image": {"repository": repo, "tag": tag}}
    return values

"""Run the helixrun chart through helm: lint, template, install.

helm comes from the integration-test tool cache (tests/cluster/build.sh, the
same pinned v3 build the control plane uses), located by
tests.cluster.controlplane.bin_dir_for_build. ``HELIXRUN_HELM=/path/to/helm``
overrides it for a quick local run. No helm is an error, never a skip.

The integration suite installs the chart with::

    from tests.chart.helm import install_chart
    objects = install_chart(cluster.kubeconfig, "helixrun", "helixrun-system", {"operator": {...}})
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "helixrun"


class HelmError(RuntimeError):
    """helm is missing or a helm command failed; the message carries helm's stderr."""


@lru_cache(maxsize=1)
def helm_binary() -> str:
    override = os.environ.get("HELIXRUN_HELM")
    if override:
        if not os.access(override, os.X_OK):
            raise HelmError(f"HELIXRUN_HELM={override} is not an executable helm")
        return override
    from tests.cluster.controlplane import ClusterError, bin_dir_for_build

    try:
        bin_dir = bin_dir_for_build(build=os.environ.get("HELIXRUN_CLUSTER_NO_BUILD") != "1")
    except ClusterError as e:
        raise HelmError(f"helm is not available: {e}") from e
    helm = os.path.join(bin_dir, "helm")
    if not os.access(helm, os.X_OK):
        raise HelmError(f"{helm} missing: tests/cluster/build.sh was run with HELIXRUN_BUILD_HELM=0?")
    return helm


def run_helm(*args: str, kubeconfig: str | os.PathLike | None = None, check: bool = True,
             timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Keep helm away from the user's repositories, plugins and caches.
    scratch = Path(tempfile.gettempdir()) / "helixrun-helm-home"
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        env.setdefault(var, str(scratch / sub))
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def _values_args(values: dict | None, values_files: Iterable[str | os.PathLike], tmp: str) -> list[str]:
    args: list[str] = []
    for f in values_files:
        args += ["-f", str(f)]
    if values:
        path = os.path.join(tmp, "values.json")  # JSON is YAML, and never ambiguous
        with open(path, "w") as fh:
            json.dump(values, fh)
        args += ["-f", path]
    return args


def parse_manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def lint(values: dict | None = None, values_files: Iterable[str | os.PathLike] = (), *, check: bool = True
         ) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as tmp:
        return run_helm("lint", "--strict", str(CHART), *_values_args(values, values_files, tmp), check=check)


def template(values: dict | None = None, values_files: Iterable[str | os.PathLike] = (), *,
             release: str = "hx", namespace: str = "helixrun-system", include_crds: bool = False,
             kube_version: str = "1.36.0") -> list[dict[str, Any]]:
    """`helm template` the chart and return the rendered objects."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", kube_version,
                *_values_args(values, values_files, tmp)]
        if include_crds:
            args.append("--include-crds")
        return parse_manifests(run_helm(*args).stdout)


def notes(values: dict | None = None, *, release: str = "hx", namespace: str = "helixrun-system") -> str:
    """NOTES.txt rendered with the chart's helpers, without a cluster.

    `helm template` never prints NOTES and `helm install --dry-run=client` wants
    a reachable cluster, so a scratch copy of the chart renders NOTES.txt through
    `tpl` into a ConfigMap.
    """
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "helixrun"
        shutil.copytree(CHART, chart)
        (chart / "notes.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
        (chart / "templates" / "zz-notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
            'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n'
        )
        out = run_helm("template", release, str(chart), "--namespace", namespace, "--show-only",
                       "templates/zz-notes.yaml", *_values_args(values, (), tmp)).stdout
    return parse_manifests(out)[0]["data"]["notes"]


def install_chart(kubeconfig: str | os.PathLike, release: str, namespace: str, values: dict | None = None, *,
                  wait: bool = True, timeout: str = "5m") -> list[dict[str, Any]]:
    """`helm upgrade --install` the chart into a cluster; returns the release's objects.

    Creates the namespace, installs the CRDs from the chart's crds/ folder on the
    first install (Helm skips CRDs that already exist), and with ``wait`` waits
    until the operator's pods are ready. Raises HelmError with helm's output.
    """
    with tempfile.TemporaryDirectory() as tmp:
        args = ["upgrade", "--install", release, str(CHART), "--namespace", namespace, "--create-namespace",
                *_values_args(values, (), tmp)]
        if wait:
            args += ["--wait", "--timeout", timeout]
        run_helm(*args, kubeconfig=kubeconfig)
    manifest = run_helm("get", "manifest", release, "--namespace", namespace, kubeconfig=kubeconfig).stdout
    return parse_manifests(manifest)


def uninstall_chart(kubeconfig: str | os.PathLike, release: str, namespace: str, *, wait: bool = True) -> None:
    """`helm uninstall`; the CRDs (and so every TrainingRun) stay."""
    args = ["uninstall", release, "--namespace", namespace, "--ignore-not-found"]
    if wait:
        args.append("--wait")
    run_helm(*args, kubeconfig=kubeconfig)

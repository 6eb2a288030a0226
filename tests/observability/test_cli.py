"""`helixrun status`, `watch` and `plot` on a finished local run, and `status` against the test cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helixrun.cli.runs import files, plot, views

from .harness import EXAMPLE, REPO, VENV_BIN


def helixrun(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helixrun.cli", *args, "--width", "200"], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny local run (40 steps, evaluations every 10, checkpoints every 5)."""
    workdir = tmp_path_factory.mktemp("cli") / "esm2"
    proc = subprocess.run(
        [str(VENV_BIN / "helixrun-train"), "--local", "-f", str(EXAMPLE), "--workdir", str(workdir), "--tiny",
         "--metrics-port", "0"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HELIXRUN_LOG_LEVEL": "WARNING"})
    assert proc.returncode == 0, f"the tiny run failed:\n{proc.stderr[-3000:]}"
    return workdir


@pytest.mark.parametrize("command", [("watch", "--once"), ("plot", "--prometheus", "http://127.0.0.1:9")])
def test_watch_and_plot_refuse_to_guess_the_run(command):
    proc = helixrun(*command)
    assert proc.returncode != 0 and "name the run (RUN) or a local run folder (--dir DIR)" in proc.stderr


def test_plot_writes_a_png_with_labelled_axes(finished_run, tmp_path):
    from PIL import Image

    out = tmp_path / "plots" / "curves.png"
    proc = helixrun("plot", str(finished_run), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert out.stat().st_size > 30_000, f"suspiciously small plot: {out.stat().st_size} bytes"
    with Image.open(out) as image:
        width, height = image.size
        colours = len(image.convert("L").getcolors(maxcolors=256) or range(256))
    assert (width, height) == (1200, 800)
    assert colours > 50, "the image looks blank"


def test_plot_figure_has_the_four_curves_with_labelled_axes(finished_run):
    curves = views.curves_from_records(files.read_records(finished_run))
    assert len(curves.steps) == 40 and {"loss", "perplexity"} <= set(curves.eval)
    fig = plot.plot_curves(curves, "esm2")
    titles = {}
    for ax in fig.axes:
        assert ax.get_xlabel() == "step", f"{ax.get_title()}: x axis unlabelled"
        assert ax.get_ylabel(), f"{ax.get_title()}: y axis unlabelled"
        assert ax.lines and all(len(line.get_xdata()) for line in ax.lines), f"{ax.get_title()}: no data"
        titles[ax.get_title()] = ax.get_ylabel()
    assert titles == {"Loss": "loss (nats)", "Evaluation metrics": "value", "Learning rate": "learning rate",
                      "Throughput": "tokens/s"}


def test_status_of_a_local_run(finished_run):
    for args in (("status", str(finished_run)), ("status", "--dir", str(finished_run))):
        proc = helixrun(*args)
        assert proc.returncode == 0, proc.stderr
        header, line = proc.stdout.strip().splitlines()[:2]
        for column in ("RUN", "PHASE", "STEP", "LOSS", "TOKENS/S", "ETA", "LAST CHECKPOINT"):
            assert column in header
        assert "esm2-650m" in line and "Succeeded" in line and "40/40" in line and "step 40" in line
    records = files.read_records(finished_run)
    assert f"{records[-1]['loss']:.4f}" in line


def test_watch_once_and_watch_of_a_finished_run_return(finished_run):
    proc = helixrun("watch", str(finished_run), "--once")
    assert proc.returncode == 0, proc.stderr
    assert "40/40" in proc.stdout and "Succeeded" in proc.stdout
    proc = helixrun("watch", str(finished_run), "--interval", "0.1", "--timeout", "30", timeout=60)
    assert proc.returncode == 0, proc.stderr  # finished: exits at once, 0 for Succeeded


def test_watch_follows_a_live_local_run_until_it_finishes(tmp_path):
    from .harness import Process, poll

    workdir = tmp_path / "live"
    trainer = Process("trainer", [str(VENV_BIN / "helixrun-train"), "--local", "-f", str(EXAMPLE), "--workdir",
                                  str(workdir), "--tiny", "--metrics-port", "0", "--set", "training.maxSteps=80",
                                  "--set", "checkpointing.everySteps=40"],
                      tmp_path / "trainer.log", env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        poll("the run folder", lambda: (workdir / "config.yaml").exists(), timeout=120, on_timeout=trainer.tail)
        proc = helixrun("watch", str(workdir), "--interval", "0.2", "--timeout", "180", timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr + trainer.tail()
        assert "80/80" in proc.stdout and "Succeeded" in proc.stdout
    finally:
        trainer.stop()


def test_watch_gives_up_after_its_timeout_on_a_run_that_never_finishes(finished_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    (unfinished / "records").mkdir(parents=True)
    (unfinished / "config.yaml").write_text((finished_run / "config.yaml").read_text())
    lines = (finished_run / "records" / "metrics.jsonl").read_text().splitlines()[:10]
    (unfinished / "records" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    proc = helixrun("watch", str(unfinished), "--interval", "0.2", "--timeout", "1", timeout=60)
    assert proc.returncode == 1 and "stopped watching" in proc.stdout


def test_row_from_a_trainingrun_status():
    obj = {
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {"training": {"maxSteps": 100}},
        "status": {"phase": "Running", "progress": {"step": 10, "totalSteps": 100, "loss": "2.5000",
                                                     "tokensPerSecond": 1234.0},
                   "lastCheckpoint": {"step": 10, "time": "2026-01-01T00:00:00Z"}},
    }
    row = views.row(views.view_from_object(obj), now=views.parse_time("2026-01-01T00:01:30Z"))
    assert row == {"RUN": "r", "NAMESPACE": "ns", "PHASE": "Running", "STEP": "10/100", "LOSS": "2.5000",
                   "TOKENS/S": "1,234", "ETA": "-", "LAST CHECKPOINT": "step 10, 1m30s ago"}


def finished_run_in(cluster, namespace: str) -> str:
    """The example run in `namespace` with the status of a finished run; its name."""
    crd = REPO / "crds" / "helixrun.io_trainingruns.yaml"
    cluster.kubectl("apply", "--server-side", "-f", str(crd))
    cluster.kubectl("wait", "--for=condition=Established", "crd/trainingruns.helixrun.io", "--timeout=60s")
    cluster.kubectl("create", "namespace", namespace, check=False)
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["namespace"] = namespace
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
    status = {"status": {"phase": "Succeeded", "progress": {"step": 500000, "totalSteps": 500000, "loss": "1.2345",
                                                            "tokensPerSecond": 98765.0},
                         "lastCheckpoint": {"step": 500000, "time": "2026-01-01T00:00:00Z"}}}
    cluster.kubectl("patch", "trainingrun", obj["metadata"]["name"], "-n", namespace, "--subresource=status",
                    "--type=merge", "-p", json.dumps(status))
    return obj["metadata"]["name"]


@pytest.mark.cluster
def test_status_and_watch_against_the_cluster(cluster):
    finished_run_in(cluster, "obs-cli")
    proc = helixrun("status", "-n", "obs-cli", env=cluster.env())
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[1]
    assert "esm2-650m" in line and "Succeeded" in line and "500000/500000" in line and "1.2345" in line
    proc = helixrun("watch", "esm2-650m", "-n", "obs-cli", "--interval", "0.2", "--timeout", "30", env=cluster.env())
    assert proc.returncode == 0 and "Succeeded" in proc.stdout, proc.stderr
    proc = helixrun("status", "no-such-run", "-n", "obs-cli", env=cluster.env())
    assert proc.returncode == 1 and "not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.cluster
def test_status_reads_the_kubeconfig_contexts_namespace_and_prints_json_or_yaml(cluster, tmp_path):
    name = finished_run_in(cluster, "obs-context")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(Path(cluster.kubeconfig).read_text())
    env = cluster.env() | {"KUBECONFIG": str(kubeconfig)}

    def kubectl(*args: str) -> str:
        return subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, check=True).stdout

    kubectl("config", "set-context", "--current", "--namespace=obs-context")
    current = kubectl("config", "current-context").strip()
    kubectl("config", "set-context", "elsewhere", f"--cluster={kubectl('config', 'view', '-o', 'jsonpath={.contexts[0].context.cluster}')}",
            f"--user={kubectl('config', 'view', '-o', 'jsonpath={.contexts[0].context.user}')}", "--namespace=default")

    proc = helixrun("status", "-o", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = json.loads(proc.stdout)
    assert (run["name"], run["namespace"], run["phase"], run["step"], run["loss"]) == (name, "obs-context", "Succeeded", 500000, 1.2345)
    proc = helixrun("status", name, "--context", current, "-o", "yaml", env=env)
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout)[0]["total_steps"] == 500000, proc.stderr
    proc = helixrun("status", "--context", "elsewhere", "-o", "json", env=env)
    assert proc.returncode == 0 and name not in proc.stdout, (proc.stdout, proc.stderr)
    proc = helixrun("watch", name, "--context", "elsewhere", "-n", "obs-context", "--once", env=env)
    assert proc.returncode == 0 and "Succeeded" in proc.stdout, proc.stderr
    proc = helixrun("status", "--context", "nowhere", env=env)
    assert proc.returncode == 1 and "context 'nowhere'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

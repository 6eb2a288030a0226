"""Processes the observability tests run for real: Prometheus (Debian's binary, tests/debian),
local trainers (helixrun-train --local --tiny) and the operator's metrics server.

Every wait polls with a bound on both attempts and time; nothing sleeps blindly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Callable

import yaml

from tests.debian import require

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "run-esm2.yaml"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(what: str, check: Callable[[], object], timeout: float = 60.0, interval: float = 0.25,
         on_timeout: Callable[[], str] | None = None):
    """Call check() until it returns something truthy; fail after `timeout` seconds (bounded attempts too)."""
    deadline = time.monotonic() + timeout
    attempts = int(timeout / interval) + 1
    last_error: Exception | None = None
    for _ in range(attempts):
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error}) {extra}")


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class Process:
    """A child process with its log file; stop() is idempotent and bounded."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None, cwd: Path = REPO):
        self.name, self.log_path = name, log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"\n--- {self.name} log (last {n} lines) ---\n" + "\n".join(lines[-n:])

    def stop(self, timeout: float = 10.0, graceful: bool = True) -> None:
        if self.proc.poll() is None and not graceful:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a SIGSTOPped process cannot act on SIGTERM
                self.proc.terminate()
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        self._log.close()


# -- Prometheus ----------------------------------------------------------------


class Prometheus(Process):
    """Prometheus on a free port; `host` and `prefix` place it elsewhere (e.g. in a real node's network
    namespace, listening on the node's address, so it reaches pod IPs)."""

    def __init__(self, workdir: Path, scrape_configs: list[dict], rules: dict | None = None,
                 host: str = "127.0.0.1", prefix: tuple[str, ...] = ()):
        binary = require("prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        config: dict = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs,
        }
        if rules is not None:
            (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
            config["rule_files"] = [str(workdir / "rules.yaml")]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        super().__init__("prometheus", [
            *prefix,
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={host}:{self.port}",
            "--log.level=warn",
        ], workdir / "prometheus.log")

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready():
            assert self.alive(), "prometheus exited" + self.tail()
            return http_get(f"{self.url}/-/ready").strip().lower().startswith(b"prometheus")

        poll("Prometheus /-/ready", ready, timeout, on_timeout=self.tail)

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            body = http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""), timeout=10)
        except urllib.error.HTTPError as exc:  # 400/422: a query that does not parse or evaluate
            body = exc.read()
        return json.loads(body)

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def targets_up(self, jobs: set[str]) -> bool:
        active = self.api("targets", state="active")["data"]["activeTargets"]
        up = {t["labels"]["job"] for t in active if t["health"] == "up"}
        return jobs <= up

    def alerts(self) -> list[dict]:
        return self.api("alerts")["data"]["alerts"]

    def firing(self, name: str, **labels) -> list[dict]:
        return [a for a in self.alerts() if a["labels"].get("alertname") == name and a["state"] == "firing"
                and all(a["labels"].get(k) == v for k, v in labels.items())]


# -- trainers and the operator's metrics server ------------------------------------


def example_copy(tmp: Path, name: str, drop_keep_best: bool = False) -> Path:
    """The ESM-2 example under another run name (runs are told apart by the `run` label)."""
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["name"] = name
    if drop_keep_best:
        obj["spec"].get("checkpointing", {}).pop("keepBest", None)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def start_trainer(tmp: Path, name: str, port: int, sets: list[str], drop_keep_best: bool = False,
                  env: dict | None = None) -> Process:
    """A tiny CPU run that keeps training (a huge maxSteps) and serves its metrics on `port`."""
    example = example_copy(tmp, name, drop_keep_best)
    argv = [str(VENV_BIN / "helixrun-train"), "--local", "-f", str(example), "--workdir", str(tmp / name), "--tiny",
            "--metrics-port", str(port), "--set", "training.maxSteps=1000000"]
    for assignment in sets:
        argv += ["--set", assignment]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HELIXRUN_LOG_LEVEL": "WARNING", **(env or {})}
    return Process(f"trainer {name}", argv, tmp / f"{name}.log", env=env)


STANDIN = Path(__file__).with_name("operator_standin.py")


def start_operator_metrics(tmp: Path, port: int, runs: list[tuple[str, str, str, str, int]],
                           restarts: list[tuple[str, str]], refused: list[str]) -> Process:
    spec = json.dumps({"runs": runs, "restarts": restarts, "refused": refused})
    return Process("operator metrics", [sys.executable, str(STANDIN), "--port", str(port), "--spec", spec],
                   tmp / "operator-metrics.log")


# -- dashboards, evaluated as Grafana would ----------------------------------------

# What Grafana puts in for its built-in variables at a 1 s scrape interval.
GRAFANA_BUILTINS = {"__rate_interval": "5s", "__range": "1m", "__interval": "1s"}


def not_on_cpu() -> set[str]:
    """Series a CPU-only run cannot export: CUDA-only trainer metrics and DCGM's."""
    from helixrun.metrics_contract import TRAINER_METRICS
    from helixrun.telemetry import dcgm
    from helixrun.telemetry.promql import exposition_names

    return set(dcgm.DCGM_METRICS).union(*(exposition_names(m) for m in TRAINER_METRICS if m.cuda_only))


def substitute(expr: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), expr)


def dashboard_variables(prom: Prometheus, board: dict, choices: dict[str, str]) -> dict[str, str]:
    """Resolve the dashboard's query variables through Prometheus, as Grafana would."""
    values = dict(GRAFANA_BUILTINS)
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = substitute(var["query"], values)
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
        assert match, f"variable ${var['name']}: unexpected query {query!r}"
        found = prom.api(f"label/{match.group(2)}/values", **{"match[]": match.group(1)})
        assert found["status"] == "success", f"variable ${var['name']}: {query}: {found}"
        assert found["data"], f"variable ${var['name']}: {query} offers no values"
        if var.get("includeAll"):
            values[var["name"]] = var.get("allValue") or ".*"
        else:
            wanted = choices.get(var["name"], found["data"][0])
            assert wanted in found["data"], f"variable ${var['name']} offers {found['data']}, not {wanted!r}"
            values[var["name"]] = wanted
    return values


def load_dashboard(filename: str) -> dict:
    from helixrun.telemetry import dashboards

    return json.loads((dashboards.CHART_DIR / dashboards.DASHBOARD_DIR / filename).read_text())


def dashboard_problems(prom: Prometheus, filename: str, choices: dict[str, str],
                       not_scraped: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """Every panel query of a chart dashboard, variables resolved: the ones that do not evaluate or (unless
    they read CUDA-only or DCGM series, absent on CPU, or series whose names start with a `not_scraped`
    prefix) return no data; and how many were checked."""
    from helixrun.telemetry import dashboards
    from helixrun.telemetry.promql import metric_names

    board = load_dashboard(filename)
    values = dashboard_variables(prom, board, choices)
    absent_on_cpu = not_on_cpu()
    problems, checked = [], 0
    for title, expr in dashboards.panel_queries(board):
        query = substitute(expr, values)
        assert "$" not in query, f"{title}: unresolved variable in {query}"
        answer = prom.query(query)
        checked += 1
        if answer.get("status") != "success":
            problems.append(f"{title}: {query}\n  does not evaluate: {answer.get('error')}")
        elif (not answer["data"]["result"] and not (metric_names(expr) & absent_on_cpu)
              and not any(name.startswith(not_scraped) for name in metric_names(expr))):
            problems.append(f"{title}: {query}\n  returns no data")
    return problems, checked

"""helixrun-launch: the pod's command. Starts one trainer per local rank and exits with the code that matters.

    helixrun-launch --config /etc/helixrun/config.yaml [more helixrun-train arguments]

It exists for the exit code. The container's code is what the PyTorchJob's restartPolicy
ExitCode reads (1-127: the run failed; 128 and up: restart the gang and resume), and torchrun
exits 1 whatever its child's code, so under torchrun a preempted or killed rank read as a
permanent failure. This launcher exits with the first failing child's code (a child killed
by signal N counts as 128+N, as a shell reports it), or 0 when every child finished.

- Placement comes from the env the Kubeflow training-operator (PyTorchJob) and Trainer v2
  (TrainJob) inject: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (else RANK, the pod index
  under PyTorchJob), PET_MASTER_ADDR/PET_MASTER_PORT (else MASTER_ADDR/MASTER_PORT). Children
  get RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, GROUP_WORLD_SIZE, ROLE_RANK,
  ROLE_WORLD_SIZE, MASTER_ADDR and MASTER_PORT as torchrun sets them, and OMP_NUM_THREADS=1
  when several share the node and it is unset (as torchrun does). Without that env it runs one
  child, rank 0 of 1.
- It is always a parent, even of one child: it is PID 1 in the container, and PID 1 ignores a
  SIGKILL sent from inside its pid namespace, so the training process must be a child that can
  be killed. As PID 1 it also reaps orphaned grandchildren (a trainer's DataLoader workers).
- One child failing stops the others (SIGTERM, then SIGKILL after HELIXRUN_LAUNCH_STOP_SECONDS,
  default 30), so a dead rank does not leave its peers waiting in a collective.
- SIGTERM and SIGINT are forwarded to every child; it then waits for them without a deadline of
  its own (the kubelet's grace period is the deadline), so a trainer's preemption save exits
  143 through it.
- Children write straight to the container's stdout and stderr.

It imports nothing heavy (no torch): it starts in milliseconds and stays small beside the ranks.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import dataclass

from helixrun_trainer.errors import EXIT_CONFIG

TRAINER = "helixrun-train"
DEFAULT_MASTER_PORT = 29500  # torchrun's
STOP_SECONDS = 30.0  # torchrun's wait between SIGTERM and SIGKILL when it stops workers


class PlacementError(ValueError):
    """The launch environment does not describe a placement we can run (exit 2)."""


@dataclass(frozen=True)
class Placement:
    nnodes: int = 1
    nproc: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc

    def child_env(self, local_rank: int, environ) -> dict[str, str]:
        env = dict(environ)
        rank = self.node_rank * self.nproc + local_rank
        env.update(
            RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(self.world_size),
            LOCAL_WORLD_SIZE=str(self.nproc), GROUP_RANK=str(self.node_rank), GROUP_WORLD_SIZE=str(self.nnodes),
            ROLE_RANK=str(rank), ROLE_WORLD_SIZE=str(self.world_size),
            MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port),
        )
        if self.nproc > 1:
            env.setdefault("OMP_NUM_THREADS", "1")  # several ranks on one node: no thread oversubscription
        return env


def _first(environ, *names: str) -> str | None:
    return next((environ[n] for n in names if environ.get(n, "") != ""), None)


def _int(value: str, name: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise PlacementError(f"{name}={value!r}: expected an integer") from None
    if number < minimum:
        raise PlacementError(f"{name}={value!r}: must be at least {minimum}")
    return number


def _nproc(value: str) -> int:
    """PET_NPROC_PER_NODE: a number, or torchrun's gpu/auto (visible GPUs; auto falls back to one on CPU)."""
    if value in ("gpu", "auto"):
        import torch  # only here: helixrun renders a number, so a pod never pays for this import

        gpus = torch.cuda.device_count()
        if gpus == 0 and value == "gpu":
            raise PlacementError("PET_NPROC_PER_NODE=gpu: no GPU visible")
        return max(gpus, 1)
    if value == "cpu":
        return 1  # one trainer per CPU pod: it uses the pod's cores through its own threads
    return _int(value, "PET_NPROC_PER_NODE", 1)


def placement_from_env(environ=os.environ) -> Placement:
    nnodes = _first(environ, "PET_NNODES") or "1"
    if ":" in nnodes:
        raise PlacementError(f"PET_NNODES={nnodes!r}: elastic node counts (min:max) are not supported")
    placement = Placement(
        nnodes=_int(nnodes, "PET_NNODES", 1),
        nproc=_nproc(_first(environ, "PET_NPROC_PER_NODE") or "1"),
        node_rank=_int(_first(environ, "PET_NODE_RANK", "RANK") or "0", "PET_NODE_RANK", 0),
        master_addr=_first(environ, "PET_MASTER_ADDR", "MASTER_ADDR") or Placement.master_addr,
        master_port=_int(_first(environ, "PET_MASTER_PORT", "MASTER_PORT") or str(DEFAULT_MASTER_PORT),
                         "PET_MASTER_PORT", 1),
    )
    if placement.node_rank >= placement.nnodes:
        raise PlacementError(f"node rank {placement.node_rank} is not below PET_NNODES={placement.nnodes}")
    return placement


def exit_code(status: int) -> int:
    """A wait status as the container reports it: the exit code, or 128+N for death by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


class Launcher:
    """The children and the one decision: which exit code the container reports."""

    def __init__(self, command: list[str], placement: Placement, stop_seconds: float = STOP_SECONDS,
                 environ=os.environ):
        self.command, self.placement, self.stop_seconds, self.environ = command, placement, stop_seconds, environ
        self.children: dict[int, int] = {}  # pid -> local rank, while running
        self.code: int | None = None  # the first failing child's
        self.forwarded: int | None = None  # a signal the launcher got and passed on

    def _say(self, message: str) -> None:
        print(f"helixrun-launch: {message}", file=sys.stderr, flush=True)

    def _signal_children(self, sig: int) -> None:
        for pid in self.children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:  # exited, not yet reaped
                pass

    def _forward(self, sig: int, _frame=None) -> None:
        self.forwarded = sig
        self._signal_children(sig)

    def _kill_survivors(self, _sig=None, _frame=None) -> None:
        if self.children:
            self._say(f"{len(self.children)} rank(s) still running {self.stop_seconds:g} s after SIGTERM: SIGKILL")
            self._signal_children(signal.SIGKILL)

    def _failed(self, local_rank: int, code: int) -> None:
        self.code = code
        rank = self.placement.node_rank * self.placement.nproc + local_rank
        self._say(f"rank {rank} (local rank {local_rank}) failed: exit {code}")
        if self.children and self.forwarded is None:
            self._say(f"stopping {len(self.children)} other local rank(s)")
            self._signal_children(signal.SIGTERM)
            signal.setitimer(signal.ITIMER_REAL, self.stop_seconds)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        signal.signal(signal.SIGALRM, self._kill_survivors)
        for local_rank in range(self.placement.nproc):
            # posix_spawnp, not subprocess: a Popen object may reap its child itself, and every wait is ours.
            try:
                pid = os.posix_spawnp(self.command[0], self.command, self.placement.child_env(local_rank, self.environ))
            except OSError as exc:
                self._say(f"cannot start {self.command[0]}: {exc}")
                self._failed(local_rank, EXIT_CONFIG)
                break
            self.children[pid] = local_rank
            if self.forwarded is not None:  # signalled while this child was starting
                os.kill(pid, self.forwarded)
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)  # any child: as PID 1, orphans are ours to reap too
            except ChildProcessError:
                break
            local_rank = self.children.pop(pid, None)
            if local_rank is None:
                continue  # a reaped orphan
            code = exit_code(status)
            if code != 0 and self.code is None:
                self._failed(local_rank, code)
        signal.setitimer(signal.ITIMER_REAL, 0)
        return self.code or 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="helixrun-launch", add_help=False,
        description=f"Start one `{TRAINER}` per local rank (PET_* env) with these arguments; exit with the "
                    "first failing rank's code.")
    parser.add_argument("-h", "--help", action="help")
    parser.parse_known_args(argv)  # only --help is ours: every other argument goes to the trainer
    try:
        placement = placement_from_env()
        stop_seconds = float(os.environ.get("HELIXRUN_LAUNCH_STOP_SECONDS", STOP_SECONDS))
    except (PlacementError, ValueError) as exc:
        print(f"helixrun-launch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return Launcher([TRAINER, *argv], placement, stop_seconds).run()


if __name__ == "__main__":
    sys.exit(main())

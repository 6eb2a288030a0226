"""Exit codes: the contract with the PyTorchJob restart policy (ExitCode).

1-127 are permanent (the job fails; restarting would fail again); 128 and above
are retryable (the pod restarts and auto-resumes). See trainer/README.md.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug: do not loop on it
EXIT_CONFIG = 2  # bad config, bad data, unknown recipe, missing input
EXIT_PLAN = 3  # the plan does not fit (refused by the planner, or out of GPU memory)
EXIT_PEER_LOST = 129  # a collective failed: another rank or its node died (NCCL/gloo); retryable
EXIT_SIGINT = 130  # interrupted (Ctrl+C), after checkpointing
EXIT_SIGTERM = 143  # preempted (SIGTERM), after checkpointing; retryable


class ConfigError(ValueError):
    """The run's config cannot be trained as given (exit 2)."""

    exit_code = EXIT_CONFIG


class DataError(ValueError):
    """The input data is missing or malformed (exit 2). Recipes raise it for bad files."""

    exit_code = EXIT_CONFIG


class PlanDoesNotFit(RuntimeError):
    exit_code = EXIT_PLAN


def exit_code_for(exc: BaseException) -> int:
    """Classify an exception that escaped the loop."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int):
        return code
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return EXIT_PLAN
    dist_errors = tuple(
        getattr(torch.distributed, name) for name in ("DistBackendError", "DistNetworkError", "DistStoreError")
        if hasattr(torch.distributed, name)
    )
    if isinstance(exc, dist_errors):
        return EXIT_PEER_LOST
    text = str(exc)
    if isinstance(exc, RuntimeError) and any(s in text for s in ("NCCL", "Gloo", "gloo", "Connection closed by peer",
                                                                 "Connection reset by peer", "ProcessGroup")):
        return EXIT_PEER_LOST
    return EXIT_UNEXPECTED

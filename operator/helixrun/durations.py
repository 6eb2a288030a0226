"""How helixrun prints a length of time: plans (step, ETA), run status and `helixrun status` alike."""

from __future__ import annotations

import math


def format_duration(seconds: float | None) -> str:
    """Two units at most, the larger first: 45s, 1m30s, 2h05m, 3d04h; `-` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"

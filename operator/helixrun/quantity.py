"""Kubernetes resource quantities ("500m", "4", "24Gi"), as pools and runs state host CPU and memory.

Parsed by the Kubernetes client's own parser (imported on first use: it pulls in the whole
client, which a trainer reading its resolved config never needs). PATTERN is what the CRD and
the pool schema accept: a positive plain or suffixed number, no exponent, no sign.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Annotated

from pydantic import BeforeValidator, StringConstraints

PATTERN = r"^([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)([KMGTPE]i|[mkMGTPE])?$"
GIB = Decimal(2**30)
_BINARY_POWERS = {"Ei": 6, "Pi": 5, "Ti": 4, "Gi": 3, "Mi": 2, "Ki": 1}  # largest first


def _text(value):
    # YAML reads `cpuPerGPU: 8` as an integer; Kubernetes accepts it, so do we.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Quantity = Annotated[str, BeforeValidator(_text), StringConstraints(pattern=PATTERN)]


def parse(value: str | int) -> Decimal:
    """The quantity's value in base units (cores, bytes)."""
    from kubernetes.utils.quantity import parse_quantity

    return parse_quantity(_text(value))


def cpu(cores: Decimal) -> str:
    """Cores as Kubernetes writes them: whole cores plainly, anything else in millicores (rounded up)."""
    if cores == cores.to_integral_value():
        return str(int(cores))
    return f"{int((cores * 1000).to_integral_value(ROUND_CEILING))}m"


def memory(size: Decimal) -> str:
    """Bytes in the largest binary unit that holds them exactly (rounded up to whole bytes)."""
    from kubernetes.utils.quantity import format_quantity

    whole = size.to_integral_value(ROUND_CEILING)
    for suffix, power in _BINARY_POWERS.items():
        if whole % (1024**power) == 0:
            return format_quantity(whole, suffix, quantize=Decimal(1))
    return str(int(whole))

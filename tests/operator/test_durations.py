"""One duration format for plans, run status and `helixrun status`."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helixrun.durations import format_duration

UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (math.nan, "-"), (math.inf, "-"), (0, "0s"), (0.4, "0s"), (59.4, "59s"), (59.6, "1m00s"),
    (90, "1m30s"), (3599, "59m59s"), (3600, "1h00m"), (2.5 * 3600, "2h30m"), (47 * 3600 + 59 * 60, "47h59m"),
    (48 * 3600, "2d00h"), (50 * 86400 + 5 * 3600, "50d05h"),
])
def test_format(seconds, text):
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e9))
def test_the_text_reads_back_within_its_smallest_unit(seconds):
    text = format_duration(seconds)
    parts = re.fullmatch(r"(?:(\d+)([dhm]))?(\d+)([dhms])", text)
    assert parts, text
    value = sum(int(n) * UNITS[u] for n, u in (parts.group(1, 2), parts.group(3, 4)) if n)
    smallest = UNITS[parts.group(4)]
    assert value <= seconds + 0.5 and seconds < value + smallest + 0.5, text

"""UTC timestamps as text, the way `datetime` writes them, without building a `datetime` per call.

Every decision record carries two (`time` and `authz_input.time`). The date-and-seconds part is the
same for all calls within one second, so it is formatted once per second (a small memo of a pure
function) and only the fraction is formatted per call.
"""

from __future__ import annotations

import functools
import math
import time


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _split(timestamp: float) -> tuple[int, int]:
    """(whole seconds, microseconds) rounded as `datetime.fromtimestamp` rounds them."""
    fraction, whole = math.modf(timestamp)
    seconds, micros = int(whole), round(fraction * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    return seconds, micros


def rfc3339_ms(timestamp: float) -> str:
    """`datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")` with `Z` for `+00:00`."""
    seconds, micros = _split(timestamp)
    return f"{_second(seconds)}.{micros // 1000:03d}Z"


def iso_utc(timestamp: float) -> str:
    """`datetime.fromtimestamp(t, UTC).isoformat()`: microseconds only when there are any, `+00:00`."""
    seconds, micros = _split(timestamp)
    if micros:
        return f"{_second(seconds)}.{micros:06d}+00:00"
    return f"{_second(seconds)}+00:00"

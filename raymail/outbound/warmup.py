"""IP warm-up: how many messages an IP may send today, by days since its first use.

A new IP earns reputation slowly: day 1 of its use allows ``daily_caps[0]``
messages, day 2 ``daily_caps[1]``, and so on; past the end of the schedule the IP
is warmed and has no cap. Days are UTC calendar days (``day_of``).
"""

from __future__ import annotations

_DAY_S = 86_400


def day_of(ts_s: float) -> int:
    return int(ts_s // _DAY_S)


def cap_for(day_index: int, daily_caps: tuple[int, ...]) -> int | None:
    """The cap on the ``day_index``-th day of use (0 = the first day); None = no cap."""
    if day_index < 0:
        day_index = 0
    return daily_caps[day_index] if day_index < len(daily_caps) else None


def remaining(first_day: int | None, today: int, used_today: int, daily_caps: tuple[int, ...],
              warmed: bool = False) -> int | None:
    """Messages the IP may still send today (None = unlimited). An IP never used
    starts its schedule today."""
    if warmed:
        return None
    cap = cap_for(today - (today if first_day is None else first_day), daily_caps)
    return None if cap is None else max(0, cap - used_today)


def grant(wanted: int, left: int | None) -> int:
    """How many of ``wanted`` messages may go now."""
    return wanted if left is None else max(0, min(wanted, left))

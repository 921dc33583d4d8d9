"""Progress bars that suit both a terminal and a job log.

On a terminal a bar redraws up to ten times a second. Off one (`ray job submit`, a CI log, `> file`) every redraw is
a new line, so the bar writes at most one line a minute there, and the job's own summary stays its last line.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional

from tqdm import tqdm

LOG_INTERVAL_S = 60.0  # seconds between lines when stderr is not a terminal


def job_bar(iterable: Optional[Iterable] = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """tqdm on stderr, redrawn every 0.1 s on a terminal and at most once a minute in a log; `enabled=False` keeps
    it silent. Other keyword arguments go to tqdm (desc, unit, total, initial)."""
    live = sys.stderr.isatty()
    interval = 0.1 if live else LOG_INTERVAL_S
    return tqdm(iterable, file=sys.stderr, disable=not enabled, dynamic_ncols=live, mininterval=interval,
                maxinterval=max(10.0, interval), **kwargs)

"""What the project's own traffic tools share: a start time to wait for, a clean stop on
SIGTERM/SIGINT, and one JSON report line on stdout at the end."""

from __future__ import annotations

import json
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any


class Stopped(Exception):
    """SIGTERM/SIGINT: finish and report what was done."""


def _stop(*_: Any) -> None:
    raise Stopped


def wait_start(start_at: str | None) -> None:
    """Sleep until the epoch time given (or read from stdin when '-')."""
    if start_at is None:
        return
    when = float(sys.stdin.readline() if start_at == "-" else start_at)
    delay = when - time.time()
    if delay > 0:
        time.sleep(delay)


def run(work: Callable[[], dict[str, Any]], error_exits: bool = False) -> int:
    """Run `work` with stop signals turned into Stopped; print its report with the CPU time."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    report = work()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the report must get out whole
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)  # all of it, start-up included
    print(json.dumps(report), flush=True)
    return 1 if error_exits and report.get("error") else 0

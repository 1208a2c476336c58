"""How a bottleneck process (delay line, HTB timer, eBPF agent) learns it must stop: SIGTERM
or SIGINT set an event that its loop checks, so it finishes the step it is in, flushes what
it recorded and exits cleanly instead of dying mid-write."""

from __future__ import annotations

import signal
import threading


def stop_event() -> threading.Event:
    """An event that SIGTERM and SIGINT set (call from the main thread, once per process)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop

"""What the datapath benchmarks share: the machine's CPU use, and a three-host testbed whose
bottleneck is faster than anything the senders here can fill (so the datapath is what limits)."""

from __future__ import annotations

import os
import time
from pathlib import Path

SPEC = """name: {name}
hosts:
  - {{name: s1, role: sender}}
  - {{name: r1, role: router}}
  - {{name: rx, role: receiver}}
links:
  - {{a: s1, b: r1}}
  - {{a: r1, b: rx, bottleneck: {{rate: {rate}, rtt: 0ms, buffer: 10000}}}}
"""


def machine_cpu_s() -> float:
    """All non-idle CPU seconds on this machine so far."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def busy_rate(seconds: float = 1.0) -> float:
    """CPU seconds per second the machine spends without our traffic (other work on it)."""
    c0, t0 = machine_cpu_s(), time.monotonic()
    time.sleep(seconds)
    return (machine_cpu_s() - c0) / (time.monotonic() - t0)

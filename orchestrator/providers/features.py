"""What this kernel can do, detected rather than assumed (FACTS.md: qdiscs differ by kernel)."""

from __future__ import annotations

import functools
import os
import subprocess


@functools.cache
def has_qdisc(kind: str) -> bool:
    """True if `tc qdisc add ... KIND` (no options) works here; tried on a veth in a scratch
    netns (this kernel has no dummy device)."""
    ns = f"tbprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        return False
    try:
        ok = subprocess.run(["ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                            capture_output=True).returncode == 0
        return ok and subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", "d0", "root", kind],
                                     capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def available_ccs() -> list[str]:
    """TCP congestion controls this kernel offers (modules that autoload are not listed)."""
    with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
        return f.read().split()


def release() -> str:
    return os.uname().release

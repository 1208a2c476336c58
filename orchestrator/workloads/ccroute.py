"""Let chosen sockets keep the congestion control they set themselves.

The netns provider gives every route a `congctl` (the host's CC from the spec), and the kernel
applies a route's congctl at connect() and to every accepted socket, over the CC the socket
set with TCP_CONGESTION (seen here: a socket that set reno before connect() ran cubic). A
congestion control that needs ECN or AccECN must be in place before the SYN, so the L4S
sender and its receiver mark their sockets (SO_MARK with MARK_OWN_CC) and a policy rule sends
marked lookups to a copy of the main table without congctl.

Installed only where some route carries a congctl. Recorded as an 'ip-rule' cleanup
'<host>' (a namespace's rules go with it at `testbed down`; real hosts need the undo).
"""

from __future__ import annotations

import json

from orchestrator.testbed.base import Testbed

MARK_OWN_CC = 0x100
TABLE = 4034
PREF = 4034
CLEANUP_KIND = "ip-rule"
_ARGS = {"gateway": "via", "dev": "dev", "protocol": "proto", "scope": "scope", "prefsrc": "src"}


def needed(testbed: Testbed, host: str) -> bool:
    return any(_congctl(r) for r in _routes(testbed, host, "main"))


def install(testbed: Testbed, host: str) -> None:
    """Copy the main table without congctl and route MARK_OWN_CC lookups through it."""
    if not needed(testbed, host):
        return
    testbed.add_cleanup(CLEANUP_KIND, host)
    testbed.run(host, ["ip", "route", "flush", "table", str(TABLE)], check=False)
    for route in _routes(testbed, host, "main"):
        testbed.run(host, ["ip", "route", "replace", "table", str(TABLE), *_route_args(route)])
    testbed.run(host, ["ip", "rule", "del", "pref", str(PREF)], check=False)
    testbed.run(host, ["ip", "rule", "add", "pref", str(PREF), "fwmark",
                       f"{MARK_OWN_CC:#x}/{MARK_OWN_CC:#x}", "lookup", str(TABLE)])


def remove(testbed: Testbed, host: str) -> None:
    testbed.run(host, ["ip", "rule", "del", "pref", str(PREF)], check=False)
    testbed.run(host, ["ip", "route", "flush", "table", str(TABLE)], check=False)
    testbed.remove_cleanup(CLEANUP_KIND, host)


def installed(testbed: Testbed, host: str) -> bool:
    out = testbed.run(host, ["ip", "rule", "show", "pref", str(PREF)], check=False).stdout
    return bool(out.strip())


def undo(testbed: Testbed, value: str) -> None:
    """The 'ip-rule' cleanup record '<host>'."""
    if value in testbed.hosts:
        remove(testbed, value)


def _routes(testbed: Testbed, host: str, table: str) -> list[dict]:
    out = testbed.run(host, ["ip", "-j", "route", "show", "table", table]).stdout
    return json.loads(out) if out.strip() else []


def _congctl(route: dict) -> bool:
    return any("congestion" in m for m in route.get("metrics", []) if isinstance(m, dict))


def _route_args(route: dict) -> list[str]:
    args = [route["dst"]]
    for key, word in _ARGS.items():
        if route.get(key):
            args += [word, str(route[key])]
    for metric in route.get("metrics", []):
        for key, value in (metric.items() if isinstance(metric, dict) else ()):
            if key != "congestion":
                args += [key, str(value)]
    return args

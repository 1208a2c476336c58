"""The 'kernel' datapath: a Linux qdisc runs the AQM, as the leaf of the testbed's HTB shaper.

Policy -> qdisc: fifo -> pfifo, red -> red, codel -> codel, pie -> pie, dualpi2 -> dualpi2
(Linux 6.17+ and an iproute2 that knows it). Parameters map one to one where tc has them; a
parameter tc cannot express is refused when it differs from what the kernel does, never
silently dropped. What this kernel (and this tc) lacks is detected before the run, in a
scratch namespace, and reported exactly: on this machine every AQM qdisc is missing (FACTS).

Telemetry: the kernel keeps no per-packet log, so telemetry/packets holds only a meta.json
saying so; a poller reads `tc -s -j qdisc` every 100 ms into telemetry/qdisc (backlog,
drops, marks and whatever the qdisc's xstats hold, such as PIE's probability and delay).
Sojourn times per packet are not available from a kernel qdisc.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator import strictjson
from orchestrator.bottleneck import dynamic_run
from orchestrator.bottleneck import shaping as link
from orchestrator.bottleneck.base import Datapath
from orchestrator.bottleneck.schedule_commands import BASELINE_CLASS
from orchestrator.errors import UserError
from orchestrator.testbed.base import Testbed
from policies.base import Policy
from policies.red import Red
from policies.telemetry import PartWriter

QDISC_OF = {"fifo": "pfifo", "red": "red", "codel": "codel", "pie": "pie", "dualpi2": "dualpi2"}
LEAF = "10:"
POLL_S = 0.1


class KernelDatapath(Datapath):
    name = "kernel"

    def __init__(self, testbed: Testbed, seed: int | None = None) -> None:
        super().__init__(testbed, seed)
        self.stop_poll = threading.Event()
        self.poller: threading.Thread | None = None
        self.writer: PartWriter | None = None
        self.last: dict[str, Any] = {}
        self.timer: dynamic_run.HtbTimer | None = None  # a dynamic link's rate changes
        self.run_dir: Path | None = None

    def unsupported(self, policy: Policy) -> str | None:
        why = super().unsupported(policy)
        if why:
            return why
        kind = QDISC_OF.get(policy.name)
        if kind is None:
            return (f"policy {policy.name!r} has no Linux qdisc (the kernel datapath runs: "
                    f"{', '.join(QDISC_OF)}); {self.elsewhere(policy)}")
        try:
            leaf_args(policy, self.testbed.bottleneck.buffer_pkts, self.testbed.bottleneck.rate_bps)
        except UserError as e:
            return str(e)
        if self.testbed.shares_files(self.testbed.bottleneck.router):
            why = missing(kind)  # the router runs this machine's kernel
        else:
            why = missing_on(self.testbed, kind)
        # suggest only datapaths that run this policy (CoDel has no ebpf version)
        return why.replace("Use the ebpf or nfqueue datapath here.", self.elsewhere(policy) + ".") \
            if why else None

    def start(self, policy: Policy, run_dir: Path) -> None:
        self.check(policy)
        bn = self.testbed.bottleneck
        # only the leaf changes: the shaper's HTB stays as `up` built it
        self.testbed.run(bn.router, ["tc", "qdisc", "replace", "dev", bn.egress, "parent", "1:1",
                                     "handle", LEAF, *leaf_args(policy, bn.buffer_pkts, bn.rate_bps)])
        tel = run_dir / "telemetry"
        packets = tel / "packets"
        packets.mkdir(parents=True, exist_ok=True)
        (packets / "meta.json").write_text(strictjson.dumps({
            "sample_rate": 0.0, "datapath": self.name, "per_packet": False,
            "sojourn": "not available: a kernel qdisc keeps no per-packet log; see telemetry/qdisc"},
            indent=1))
        self.writer = PartWriter(tel / "qdisc", meta={"datapath": self.name, "poll_s": POLL_S,
                                                      "qdisc": QDISC_OF[policy.name]})
        self.poller = threading.Thread(target=self._poll, name="qdisc-poll", daemon=True)
        self.poller.start()
        self.run_dir = run_dir
        self.timer = dynamic_run.start_timer(self, run_dir, [dict(BASELINE_CLASS)])

    def _poll(self) -> None:
        next_t = time.monotonic()
        while not self.stop_poll.wait(max(0.0, next_t - time.monotonic())):
            next_t += POLL_S
            row = self._read()
            if row and self.writer is not None:
                self.last = row
                self.writer.add(row)

    def _read(self) -> dict[str, Any] | None:
        bn = self.testbed.bottleneck
        res = self.testbed.run(bn.router, ["tc", "-s", "-j", "qdisc", "show", "dev", bn.egress],
                               check=False)
        try:
            qdiscs = json.loads(res.stdout)
        except ValueError:
            return None
        leaf = next((q for q in qdiscs if q.get("handle") == LEAF), None)
        return None if leaf is None else flat_stats(leaf, time.time())

    def stop(self) -> dict[str, Any]:
        timer, self.timer = self.timer, None
        schedule = dynamic_run.finish_timer(self, timer, self.run_dir, remove_remote=True)
        self.stop_poll.set()
        if self.poller is not None:
            self.poller.join(5)
        if self.writer is not None:
            self.writer.close()
        self.clean(self.testbed)
        return {"datapath": self.name, "per_packet": False, **schedule,
                **{k: v for k, v in self.last.items() if k != "t"}}

    @classmethod
    def clean(cls, testbed: Testbed) -> None:
        """Rebuild the baseline shaper (HTB with its fifo leaf); idempotent."""
        bn = testbed.bottleneck
        testbed.run(bn.router, ["tc", "qdisc", "del", "dev", bn.egress, "root"], check=False)
        link.install_shaper(testbed)


def flat_stats(q: dict[str, Any], t: float) -> dict[str, Any]:
    """One row from a qdisc in `tc -s -j` form: the common counters and its xstats."""
    row: dict[str, Any] = {"t": t, "kind": q.get("kind", ""), "backlog_bytes": q.get("backlog", 0),
                           "backlog_pkts": q.get("qlen", 0), "drops": q.get("drops", 0),
                           "overlimits": q.get("overlimits", 0), "sent_bytes": q.get("bytes", 0),
                           "sent_pkts": q.get("packets", 0)}
    for key, value in (q.get("xstats") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            row[f"x_{key}"] = value
    return row


# ---------------------------------------------------------------- policy -> tc arguments


def leaf_args(policy: Policy, buffer_pkts: int, rate_bps: float) -> list[str]:
    """The tc arguments of the leaf qdisc that runs `policy` (UserError if tc cannot say it)."""
    p = policy.params
    limit = str(getattr(p, "limit", None) or buffer_pkts)
    build = {"fifo": lambda: ["pfifo", "limit", limit], "codel": lambda: _codel(p, limit),
             "pie": lambda: _pie(p, limit), "red": lambda: _red(p, limit, rate_bps),
             "dualpi2": lambda: _dualpi2(p)}
    if policy.name not in build:
        raise UserError(f"policy {policy.name!r} has no Linux qdisc")
    return build[policy.name]()


def _refuse(policy: str, p: Any, key: str, kernel_value: Any, why: str) -> None:
    if getattr(p, key) != kernel_value:
        raise UserError(f"policy {policy!r} on the kernel datapath: parameter '{key}' = "
                        f"{getattr(p, key)!r} cannot be set ({why}); the kernel uses {kernel_value!r}")


def _ms(x: float) -> str:
    return f"{round(x * 1000)}us"


def _codel(p: Any, limit: str) -> list[str]:
    _refuse("codel", p, "maxpacket", 1514, "tc-codel has no maxpacket")
    return ["codel", "limit", limit, "target", _ms(p.target_ms), "interval", _ms(p.interval_ms),
            "ecn" if p.ecn else "noecn"]


def _pie(p: Any, limit: str) -> list[str]:
    _refuse("pie", p, "dualq", False, "Linux has no DualQ with a PIE base; use nfqueue or ebpf")
    _refuse("pie", p, "max_burst_ms", 150.0, "tc-pie has no burst allowance setting")
    _refuse("pie", p, "mark_ecnth", 0.1, "Linux pie marks up to a fixed 10%")
    _refuse("pie", p, "cap_drop", True, "Linux pie always caps the drop adjustment")
    # tc-pie takes alpha and beta in units of 1/16 Hz (defaults 2 and 20 = 0.125 and 1.25 Hz)
    return ["pie", "limit", limit, "target", _ms(p.target_ms), "tupdate", _ms(p.tupdate_ms),
            "alpha", str(round(p.alpha * 16)), "beta", str(round(p.beta * 16)),
            "ecn" if p.ecn else "noecn"]


def _red(p: Any, limit_pkts: str, rate_bps: float) -> list[str]:
    _refuse("red", p, "gentle", False, "Linux sch_red has no gentle mode")
    _refuse("red", p, "dualq", False, "Linux has no DualQ with a RED base; use nfqueue or ebpf")
    unit = 1 if p.byte_mode else p.avpkt  # tc-red thresholds are bytes
    lo, hi = Red(p).thresholds(rate_bps)  # min_ms/max_ms at the link's rate, else min_th/max_th
    qmin, qmax = int(lo * unit), int(hi * unit)
    args = ["red", "limit", str(int(limit_pkts) * 1514), "min", str(qmin), "max", str(qmax),
            "avpkt", str(p.avpkt), "burst", str(red_burst(p.w_q, qmin, p.avpkt)),
            "probability", str(p.max_p), "bandwidth", f"{int(rate_bps)}bit"]
    return args + (["ecn"] if p.ecn else []) + (["harddrop"] if p.harddrop else [])


def red_burst(w_q: float, qmin: int, avpkt: int) -> int:
    """The tc-red `burst` whose EWMA weight (tc_red_eval_ewma: 2^-Wlog) is nearest w_q."""
    def wlog(burst: int) -> int | None:
        a = burst + 1 - qmin / avpkt
        w = 0.5
        for n in range(1, 32):
            if a >= 1 and a <= (1 - (1 - w) ** burst) / w:
                return n
            w /= 2
        return None

    best, best_err = 1, math.inf
    for burst in range(1, 5000):
        n = wlog(burst)
        if n is not None and abs(math.log2(2.0 ** -n) - math.log2(w_q)) < best_err:
            best, best_err = burst, abs(math.log2(2.0 ** -n) - math.log2(w_q))
    return best


def _dualpi2(p: Any) -> list[str]:
    _refuse("dualpi2", p, "qdelay", "max", "Linux dualpi2 always uses the larger queue delay")
    _refuse("dualpi2", p, "arithmetic", "kernel", "sch_dualpi2 computes in integers")
    # The gains in 1/256 Hz the policy's kernel arithmetic runs (policies/dualpi2_kernel.py):
    # none for the kernel's defaults (41, 819; tc would turn '0.16' into 40), else n/256 in
    # full: 8 decimals print it exactly, and a float holds it exactly (n < 2^23), so tc's
    # (uint32)(strtof(s) * 256) gives back n.
    gains = [arg for key, default in (("alpha", 41), ("beta", 819))
             if getattr(p, key + "256") != default
             for arg in (key, f"{getattr(p, key + '256') / 256:.8f}")]
    step = (["step_thresh", f"{p.step_thresh_pkts}p"] if p.step_thresh_pkts is not None
            else ["step_thresh", _ms(p.step_thresh_ms)])
    return ["dualpi2", "limit", str(p.limit), "target", _ms(p.target_ms),
            "tupdate", _ms(p.tupdate_ms), *gains, *step, "min_qlen_step", str(p.min_qlen_step),
            "coupling_factor", f"{p.coupling_factor:g}",
            "classic_protection", str(round(p.c_protection * 100)),
            "drop_on_overload" if p.drop_overload else "overflow",
            "drop_enqueue" if p.drop_early else "drop_dequeue"]


# ---------------------------------------------------------------- what this machine has


@functools.cache
def missing(kind: str) -> str | None:
    """Why qdisc `kind` cannot be used here (kernel and tc both checked), or None."""
    return _missing(kind, _run, "this")


def missing_on(tb: Testbed, kind: str) -> str | None:
    """As missing(), on the testbed's (remote) router: its kernel and its tc."""
    router = tb.bottleneck.router
    return _missing(kind, lambda argv: tb.run(router, argv, check=False), f"{router}'s")


Runner = Callable[[list[str]], subprocess.CompletedProcess]


def _missing(kind: str, run: Runner, whose: str) -> str | None:
    """Probe in a scratch namespace, so the probe never touches a real interface."""
    ns = f"tbkprobe{os.getpid()}"
    if run(["ip", "netns", "add", ns]).returncode != 0:
        return f"cannot create a scratch namespace to probe for the {kind!r} qdisc (needs root)"
    try:
        run(["ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        kernel = run(["tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", kind])
        parser = run(["tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", kind, "help"])
    finally:
        run(["ip", "netns", "del", ns])
    problems = []
    if kernel.returncode != 0:
        module = run(["modinfo", "-F", "filename", f"sch_{kind}"])
        where = (f"its module sch_{kind} exists but did not load" if module.returncode == 0
                 else f"no module sch_{kind} and not built in")
        release = run(["uname", "-r"]).stdout.strip()
        problems.append(f"{whose} kernel {release} has no {kind!r} qdisc ({where}: "
                        f"{kernel.stderr.strip()})")
    if "Unknown qdisc" in parser.stderr:
        tc = run(["tc", "-V"]).stdout.strip() or "tc"
        problems.append(f"{whose} tc ({tc}) cannot parse {kind!r} options")
    if not problems:
        return None
    return (f"the kernel datapath needs the {kind!r} qdisc: " + "; ".join(problems) +
            ". Use the ebpf or nfqueue datapath here.")


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)

"""The 'ebpf' datapath: HTB for the rate, a tc BPF program for the AQM, Python for the policy.

On the router's bottleneck egress the baseline shaper (HTB 1: / 1:1 / pfifo 10:) is replaced
by a DualQ shape this kernel can build without a dualpi2 qdisc:

    root 1: htb default 12
      class 1:1   rate R ceil R                   the link
        class 1:11  rate 1kbit   ceil R prio 0    L queue (ECT(1), CE), leaf pfifo 11:
        class 1:12  rate c*R     ceil R prio 1    C queue (the rest),   leaf pfifo 12:

c is the policy's classic protection (QueueConfig.c_protection, 10% for DualPI2): L goes
first, but when both queues are busy C still gets its guaranteed rate, the role RFC 9332's
weighted scheduler plays. L borrows the link's rate rather than owning (1-c)R, so an L packet
waits for the link's bucket to pay for the packet sent before it, as behind a packet in
service on a real link (policies/DUALPI2.md, "The datapaths side by side").
A clsact egress BPF program (bpf/dualq.c) runs before the root
qdisc: it classifies, applies the drop/mark probabilities the control loop wrote, step-marks
the L queue from its in-kernel backlog and logs packets. The agent process
(ebpf_agent.py) on the router runs the policy every tupdate. If the agent dies, the kernel
keeps the last decision (fail static) and stop() reports it.

Supports policies that decide per update (probabilities, step threshold); per-packet
policies (CoDel) need a dequeue hook and run on nfqueue. Probabilities are applied at
enqueue, as PIE does (Linux dualpi2 tosses its coin at dequeue).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import policies
from orchestrator import strictjson
from orchestrator.bottleneck import bpfobj, dynamic_run
from orchestrator.bottleneck import shaping as link
from orchestrator.bottleneck.base import Datapath
from orchestrator.bottleneck.dualpi2_rules import per_packet_rules_missing
from orchestrator.errors import UserError
from orchestrator.testbed.base import Testbed
from policies.base import Policy

log = logging.getLogger(__name__)

AGENT = "orchestrator.bottleneck.ebpf_agent"
AGENT_TAG = "ebpf-agent"
PIN_SUBDIR = "ebpf"
CLASS_L, CLASS_C = "1:11", "1:12"
CLASSIDS = (0x10011, 0x10012)  # skb->priority values for 1:11 and 1:12
LEAF_HANDLES = (0x110000, 0x120000)  # their pfifo leaves 11: and 12:
LEAF_SLACK = 64  # the BPF program enforces the limit; the fifos only catch its races
RECORDS_PER_S = 100_000  # telemetry budget: sample above it
MIN_RATE_BPS = 1000
READY_TIMEOUT_S = 60.0  # the agent imports the policy: an AQM-LLM loads torch


class EbpfDatapath(Datapath):
    name = "ebpf"

    def __init__(self, testbed: Testbed, seed: int | None = None,
                 sample_rate: float | None = None, l_borrows: bool = True) -> None:
        super().__init__(testbed, seed)
        self.sample_rate = sample_rate
        self.l_borrows = l_borrows
        self.agent: subprocess.Popen | None = None
        self.cfg: dict[str, Any] = {}
        self.cfg_path: str | None = None  # on the router
        self.tel: Path | None = None
        self.remote: str | None = None  # where the router writes telemetry (Testbed.workdir)
        self.timer: dynamic_run.HtbTimer | None = None  # a dynamic link's rate changes
        self.run_dir: Path | None = None

    def unsupported(self, policy: Policy) -> str | None:
        why = super().unsupported(policy)
        if why is None and policy.per_packet:
            why = (f"policy {policy.name!r} acts per packet at dequeue; the ebpf datapath applies "
                   f"per-update probabilities only (use the nfqueue datapath)")
        if why is None:
            why = per_packet_rules_missing(policy)
        return why

    # ---- start
    def start(self, policy: Policy, run_dir: Path) -> None:
        self.check(policy)
        tel = self.tel = run_dir / "telemetry"
        tel.mkdir(parents=True, exist_ok=True)
        router = self.testbed.bottleneck.router
        self.remote = self.testbed.workdir(router, tel)  # brought back into tel by stop()
        self.cfg = self._config(policy, self.remote)
        self.cfg_path = f"{self.remote}/ebpf-agent.json"
        self.testbed.put(router, self.cfg_path, strictjson.dumps(self.cfg, indent=1, default=str))
        try:
            self._agent_cmd("setup")
            qc = policy.queue_config()
            c_share = qc.c_protection if qc.dualq else 1.0  # one queue: all C
            self._install_dualq(c_share)
            self._start_agent(tel / "ebpf-agent.log")
            # a dynamic link: the timer changes all three classes together, shares kept
            self.run_dir = run_dir
            self.timer = dynamic_run.start_timer(self, run_dir, [
                {"parent": "1:", "classid": "1:1", "share": 1.0},
                {"parent": "1:1", "classid": CLASS_L, "share": 1 - c_share, "prio": 0},
                {"parent": "1:1", "classid": CLASS_C, "share": c_share, "prio": 1}])
        except BaseException:
            self.clean(self.testbed)
            raise

    def _config(self, policy: Policy, tel: str) -> dict[str, Any]:
        """What the agent needs: the policy by name and parameters (it builds its own copy:
        policies are pure), exploration noise if the policy is wrapped in it, the link."""
        bn, qc = self.testbed.bottleneck, policy.queue_config()
        return {
            "pin_dir": str(self.testbed.bpffs() / PIN_SUBDIR),
            "obj": bpfobj.build_on(self.testbed, bn.router),  # copied or compiled there if remote
            "ifname": bn.egress, "link_rate_bps": bn.rate_bps, "classids": list(CLASSIDS),
            "leaf_handles": list(LEAF_HANDLES),
            "limit_pkts": qc.limit_pkts or bn.buffer_pkts, "single_queue": not qc.dualq,
            "sample_every": self._sample_every(bn.rate_bps),
            **policies.to_config(policy, self.seed),
            "tupdate_s": qc.tupdate_s,
            **({} if qc.min_backlog_bytes is None else {"min_backlog_bytes": qc.min_backlog_bytes}),
            "out_dir": tel, "stats_file": f"{tel}/ebpf-agent-stats.json",
            "capacity": self._capacity(tel),
        }

    def _capacity(self, tel: str) -> dict[str, Any] | None:
        """A dynamic link's rate steps, for the agent's step-marking arithmetic (RateFollower)."""
        from orchestrator.spec.dynamic import T0_FILE

        dyn = dynamic_run.of(self.testbed)
        if dyn is None or not dyn.varies_rate:
            return None
        steps = dyn.capacity_steps(getattr(self, "duration_s", dynamic_run.DEFAULT_DURATION_S))
        return {"steps": [[t, r] for t, r in steps], "t0_path": f"{tel}/{T0_FILE}"}

    def _sample_every(self, rate_bps: float) -> int:
        if self.sample_rate is not None:
            if not 0 < self.sample_rate <= 1:
                raise UserError(f"ebpf sample_rate: expected a value in (0, 1], got {self.sample_rate}")
            return max(1, round(1 / self.sample_rate))
        return max(1, math.ceil(rate_bps / (1500 * 8) / RECORDS_PER_S))

    def _install_dualq(self, c_protection: float) -> None:
        bn, run = self.testbed.bottleneck, self._tc
        rate = bn.rate_bps
        leaf = str(self.cfg["limit_pkts"] + LEAF_SLACK)
        run(["qdisc", "del", "dev", bn.egress, "root"], check=False)
        run(["qdisc", "add", "dev", bn.egress, "root", "handle", "1:", "htb", "default", "12"])
        run(["class", "add", "dev", bn.egress, "parent", "1:", "classid", "1:1", "htb",
             "rate", _bits(rate), "ceil", _bits(rate)])
        # L owns (almost) no rate of its own: it borrows the link's, so an L packet waits until
        # the link's bucket has paid for the packet sent before it (the classic packet "in
        # service"), as under sch_dualpi2 beneath a shaper. With its own (1-c)R bucket an L
        # packet passed at once, ahead of the link's rate, and its sojourn was ~0 (README,
        # "Crosscheck"). `l_borrows=False` gives that older shape back.
        l_share = 0.0 if self.l_borrows else 1 - c_protection
        for classid, share, prio in ((CLASS_L, l_share, "0"), (CLASS_C, c_protection, "1")):
            run(["class", "add", "dev", bn.egress, "parent", "1:1", "classid", classid, "htb",
                 "rate", _bits(max(share * rate, MIN_RATE_BPS)), "ceil", _bits(rate), "prio", prio])
            run(["qdisc", "add", "dev", bn.egress, "parent", classid,
                 "handle", classid.split(":")[1] + ":", "pfifo", "limit", leaf])
        run(["qdisc", "add", "dev", bn.egress, "clsact"])
        run(["filter", "add", "dev", bn.egress, "egress", "prio", "1", "handle", "1", "bpf", "da",
             "object-pinned", str(Path(self.cfg["pin_dir"]) / "prog_egress")])

    def _start_agent(self, log_path: Path) -> None:
        with open(log_path, "wb") as out:
            self.agent = self.testbed.popen(self.testbed.bottleneck.router, self._agent_argv("run"),
                                            tag=AGENT_TAG, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while b"ebpf agent ready" not in log_path.read_bytes():
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise UserError(f"the ebpf agent did not start: {log_path.read_text()[-1500:]}")
            time.sleep(0.02)

    # ---- stop
    def stop(self) -> dict[str, Any]:
        counters: dict[str, Any] = {"datapath": self.name}
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.stop()
        if self.agent is not None:
            rc = self.agent.poll()
            counters["agent_died"] = rc is not None
            if rc is not None:  # fail static: the kernel kept the last decision until now
                log.warning("the ebpf control agent exited early (code %s); the datapath kept "
                            "applying its last decision", rc)
                counters["agent_exit_code"] = rc
            self.testbed.stop(self.agent)
        try:
            totals = json.loads(self._agent_cmd("finish").stdout)
            counters["sample_rate"] = 1 / self.cfg["sample_every"]
        finally:
            self.clean(self.testbed)
            self._fetch()
        counters.update(dynamic_run.finish_timer(self, timer, self.run_dir))
        stats = self.tel / "ebpf-agent-stats.json" if self.tel else None
        if self.agent is not None and stats is not None and stats.exists():
            counters.update(json.loads(stats.read_text()))
        self.agent = None
        counters.update(totals)
        return counters

    def _fetch(self) -> None:
        """Bring the router's telemetry back into run_dir/telemetry (nothing to do locally)."""
        if self.remote is not None and self.tel is not None:
            self.testbed.fetch(self.testbed.bottleneck.router, self.remote, self.tel)
            self.remote = None

    # ---- clean
    @classmethod
    def clean(cls, testbed: Testbed) -> None:
        """Remove the agent, filter, clsact, DualQ shape and pins; restore the baseline
        shaper. Idempotent, and works after a kill -9 of everything (state from the testbed)."""
        bn = testbed.bottleneck
        for proc in [p for p in testbed.processes if p.tag == AGENT_TAG]:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if any(p.tag == AGENT_TAG for p in testbed.processes):
            testbed.processes = [p for p in testbed.processes if p.tag != AGENT_TAG]
            testbed.save()
        testbed.run(bn.router, ["tc", "qdisc", "del", "dev", bn.egress, "clsact"], check=False)
        classes = testbed.run(bn.router, ["tc", "class", "show", "dev", bn.egress], check=False)
        if f"htb {CLASS_L} " in classes.stdout:
            testbed.run(bn.router, ["tc", "qdisc", "del", "dev", bn.egress, "root"], check=False)
            link.install_shaper(testbed)
        testbed.run(bn.router, ["rm", "-rf", str(testbed.bpffs() / PIN_SUBDIR)], check=False)

    # ---- helpers
    def _agent_argv(self, command: str) -> list[str]:
        return [self.testbed.python(self.testbed.bottleneck.router), "-m", AGENT, command, str(self.cfg_path)]

    def _agent_cmd(self, command: str) -> subprocess.CompletedProcess:
        return self.testbed.run(self.testbed.bottleneck.router, self._agent_argv(command), timeout=60)

    def _tc(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return self.testbed.run(self.testbed.bottleneck.router, ["tc", *args], check=check)


def _bits(bps: float) -> str:
    return f"{int(bps)}bit"


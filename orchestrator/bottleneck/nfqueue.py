"""The `nfqueue` datapath: the whole bottleneck link in a userspace process, so any policy
runs per packet (CoDel's dequeue hook included).

start() launches the link process (nfqueue_daemon.py) in the router's namespace, takes the
baseline HTB shaper off the bottleneck egress (the process emulates the rate itself) and sends
the forward traffic to it with iptables rules in the filter table's FORWARD chain. The base
delay stays with the testbed's delay line: its rules live in the mangle table, which runs
first, and its ACCEPT verdict continues into our rule. The rules carry --queue-bypass, so if
the link process dies, traffic still flows (unshaped); stop() reports that.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import policies
from orchestrator import strictjson
from orchestrator.bottleneck import shaping as link
from orchestrator.bottleneck.base import Datapath
from orchestrator.errors import UserError
from orchestrator.testbed.base import Testbed
from policies.base import Policy

QUEUE_NUM = 10
RULE_COMMENT = "testbed-nfqueue"  # every rule we add carries it, so clean() finds them all
REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0  # the link process imports the policy: an AQM-LLM loads torch


def rule_args(ingress: str, egress: str) -> list[str]:
    """The FORWARD rule (without -A/-D) that hands one ingress's traffic to the link."""
    return ["FORWARD", "-i", ingress, "-o", egress, "-m", "comment", "--comment", RULE_COMMENT,
            "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM), "--queue-bypass"]


class NfqueueDatapath(Datapath):
    name = "nfqueue"

    def __init__(self, testbed: Testbed, seed: int | None = None) -> None:
        super().__init__(testbed, seed)
        self.proc: subprocess.Popen | None = None
        self.run_dir: Path | None = None
        self.log_path: Path | None = None
        self.remote: str | None = None  # where the router writes telemetry (see Testbed.workdir)

    def start(self, policy: Policy, run_dir: Path) -> None:
        self.check(policy)
        tb, bn = self.testbed, self.testbed.bottleneck
        self.run_dir = Path(run_dir)
        tel = self.run_dir / "telemetry"
        tel.mkdir(parents=True, exist_ok=True)
        self.remote = tb.workdir(bn.router, tel)  # brought back into tel by stop()
        config_path = f"{self.remote}/nfqueue-config.json"
        config = self.config(policy)
        tb.put(bn.router, config_path, strictjson.dumps(config, indent=1, default=str))
        tb.run(bn.router, ["rm", "-f", config["counters_path"]])  # never report an earlier run's
        self.log_path = tel / "nfqueue-link.log"  # its stdout: on this machine for every provider
        argv = [tb.python(bn.router), "-m", "orchestrator.bottleneck.nfqueue_daemon", "--config", config_path]
        with open(self.log_path, "wb") as out:
            self.proc = tb.popen(bn.router, argv, tag="nfqueue-link", stdout=out, stderr=subprocess.STDOUT,
                                 cwd=REPO)
        try:
            self._wait_ready()
            link.remove_shaper(tb)
            self.clean(tb)  # a rule left by an earlier crashed run would double-queue
            for dev in bn.ingress:
                tb.run(bn.router, ["iptables", "-t", "filter", "-A", *rule_args(dev, bn.egress)])
        except BaseException:
            self.stop()
            raise

    def config(self, policy: Policy) -> dict[str, Any]:
        """What the link process needs: the policy by name and parameters (it builds its own
        copy: policies are pure, so the copy behaves the same), the link, the seed."""
        bn = self.testbed.bottleneck
        assert self.run_dir is not None
        tel = self.remote or str(self.run_dir / "telemetry")
        return {
            "queue_num": QUEUE_NUM, **policies.to_config(policy, self.seed), "seed": self.seed,
            "rate_bps": bn.rate_bps, "buffer_pkts": bn.buffer_pkts, "buffer_bytes": bn.buffer_bytes,
            "buffer_in": getattr(bn, "buffer_in", "packets"),
            # the kernel's receive timestamp is the arrival, unless a delay line holds the
            # packets between the receive and us (nfqueue_link.py explains)
            "kernel_timestamps": not (bn.delay_mode == "nfqueue" and (bn.forward_delay_s > 0 or any(
                f > 0 for _, f, _ in (self.testbed.extra.get("delay_schedule") or {}).get("steps", [])))),
            "telemetry_dir": tel,
            "counters_path": f"{tel}/nfqueue-counters.json",
            **self._dynamic_config(),
        }

    def _dynamic_config(self) -> dict[str, Any]:
        """A dynamic link: the schedule or trace (applied per packet from the run's t0), the
        highest rate (for the log's sampling) and random loss."""
        from orchestrator.bottleneck import dynamic_run

        dyn = dynamic_run.of(self.testbed)
        if dyn is None or not dyn.dynamic:
            return {}
        assert self.run_dir is not None
        out: dict[str, Any] = {}
        sched = dyn.nfqueue_config(dynamic_run.t0_path(self.testbed, self.run_dir))
        if sched is not None:
            duration = getattr(self, "duration_s", dynamic_run.DEFAULT_DURATION_S)
            out["schedule"] = sched
            out["max_rate_bps"] = max(r for _, r in dyn.capacity_steps(duration))
        if dyn.loss is not None:
            out["loss"] = dyn.loss.to_dict()
        return out

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.log_path is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if b"nfqueue-link ready" in self.log_path.read_bytes():
                return
            if self.proc.poll() is not None:
                raise UserError(f"the nfqueue link process exited ({self.proc.returncode}): "
                                f"{self._log_tail()}")
            time.sleep(0.02)
        raise UserError(f"the nfqueue link process did not start in {READY_TIMEOUT_S:.0f} s: "
                        f"{self._log_tail()}")

    def _log_tail(self) -> str:
        assert self.log_path is not None
        return self.log_path.read_text(errors="replace")[-1200:].strip()

    def stop(self) -> dict[str, Any]:
        tb = self.testbed
        counters: dict[str, Any] = {"datapath": self.name}
        died = self.proc is not None and self.proc.poll() is not None
        self.clean(tb)  # first, so packets stop queueing to a process about to exit
        if self.proc is not None:
            rc = tb.stop(self.proc, timeout=10)
            counters["link_exit_code"] = rc
            if died:
                counters["link_died"] = (f"the link process exited ({rc}) before stop: traffic "
                                         f"bypassed it unshaped from then on; see {self.log_path}")
            self.proc = None
        link.install_shaper(tb)
        if self.run_dir is not None and self.remote is not None:
            tb.fetch(tb.bottleneck.router, self.remote, self.run_dir / "telemetry")
            self.remote = None
        if self.run_dir is not None:
            path = self.run_dir / "telemetry" / "nfqueue-counters.json"
            if path.exists():
                counters.update(json.loads(path.read_text()))
            elif "link_died" not in counters:
                counters["link_died"] = f"no counters written; see {self.log_path}"
        return counters

    @classmethod
    def clean(cls, testbed: Testbed) -> None:
        """Delete every rule we added (found by its comment); idempotent, works after kill -9."""
        router = testbed.bottleneck.router
        res = testbed.run(router, ["iptables", "-t", "filter", "-S", "FORWARD"], check=False)
        if res.returncode != 0:
            return
        for line in res.stdout.splitlines():
            args = shlex.split(line)
            if args[:1] == ["-A"] and RULE_COMMENT in args:
                testbed.run(router, ["iptables", "-t", "filter", "-D", *args[1:]], check=False)

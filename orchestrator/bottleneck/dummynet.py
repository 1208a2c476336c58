"""The 'dummynet' datapath: the FreeBSD router's own dummynet AQM, exactly as `testbed up`
configured it (the router's ssh.aqm on the bottleneck pipe, ssh.aqm_args its parameters;
playbooks/roles/freebsd_router and orchestrator/providers/ssh/freebsd.py build it).

Minimal on purpose: it deploys nothing. A policy runs here only if it is the AQM the router
was brought up with (fifo, codel or pie) and asks for that AQM's defaults, since the
parameters in force are the spec's aqm_args; anything else is refused before the run, never
run silently as something else. dummynet keeps no per-packet log: telemetry/packets/meta.json
says so, and the router's `ipfw pipe show` / `ipfw sched show` at start and at stop are kept
in telemetry/dummynet-{start,stop}.txt.

A dynamic link (a rate or RTT schedule) runs as `ipfw pipe N config` commands at their times
(bottleneck/schedule_commands.py builds them as data, the timer process runs them on the
router and records how late each took effect); traces and random loss are refused here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import policies
from orchestrator import strictjson
from orchestrator.bottleneck import dynamic_run
from orchestrator.bottleneck.base import Datapath
from orchestrator.testbed.base import Testbed
from policies.base import Policy

AQM_OF = {"fifo": "fifo", "codel": "codel", "pie": "pie"}  # policy -> dummynet AQM


class DummynetDatapath(Datapath):
    name = "dummynet"

    def __init__(self, testbed: Testbed, seed: int | None = None) -> None:
        super().__init__(testbed, seed)
        self.tel: Path | None = None
        self.timer: dynamic_run.HtbTimer | None = None
        self.run_dir: Path | None = None

    def _router(self) -> Any:
        """The router's ssh settings, or None when it is not a host reached over SSH."""
        try:
            return self.testbed.spec().host(self.testbed.bottleneck.router).ssh
        except Exception:  # noqa: BLE001 - any spec without ssh hosts: not a dummynet router
            return None

    def unsupported(self, policy: Policy) -> str | None:
        why = super().unsupported(policy)
        if why:
            return why
        ssh = self._router()
        if ssh is None or ssh.os != "freebsd":
            return "the dummynet datapath needs a FreeBSD router (ssh testbed, router with os: freebsd)"
        aqm = ssh.aqm or "fifo"
        if AQM_OF.get(policy.name) != aqm:
            return (f"the router's dummynet runs {aqm!r} (ssh.aqm at `testbed up`), not policy "
                    f"{policy.name!r}; bring the testbed up with ssh.aqm: {policy.name}")
        if policies.to_config(policy)["explore"] is not None:
            return "dummynet applies no per-update decisions: exploration noise needs nfqueue or ebpf"
        if dataclasses.asdict(policy.params) != dataclasses.asdict(type(policy.params)()):
            return (f"on the dummynet datapath the {aqm} parameters are the spec's ssh.aqm_args, "
                    f"set at `testbed up`; run policy {policy.name!r} with its defaults")
        return None

    def start(self, policy: Policy, run_dir: Path) -> None:
        self.check(policy)
        ssh = self._router()
        self.tel = Path(run_dir) / "telemetry"
        (self.tel / "packets").mkdir(parents=True, exist_ok=True)
        (self.tel / "packets" / "meta.json").write_text(strictjson.dumps({
            "sample_rate": 0.0, "datapath": self.name, "per_packet": False,
            "sojourn": "not available: dummynet keeps no per-packet log"}, indent=1))
        (self.tel / "dummynet.json").write_text(strictjson.dumps(
            {"aqm": ssh.aqm or "fifo", "aqm_args": dict(ssh.aqm_args)}, indent=1, default=str))
        self._snapshot("start")
        self.run_dir = Path(run_dir)
        timeline = self.timeline(getattr(self, "duration_s", dynamic_run.DEFAULT_DURATION_S))
        if timeline:
            dyn = dynamic_run.of(self.testbed)
            assert dyn is not None
            self.timer = dynamic_run.HtbTimer(self.testbed, self.run_dir, timeline=timeline,
                                              name="dummynet-changes")
            self.timer.start(dyn, getattr(self, "duration_s", dynamic_run.DEFAULT_DURATION_S))

    def timeline(self, duration_s: float) -> list[Any]:
        """The run's schedule as ipfw commands for this router's pipes ([] for a static link)."""
        from orchestrator.bottleneck.schedule_commands import dummynet_timeline

        dyn = dynamic_run.of(self.testbed)
        if dyn is None or not (dyn.varies_rate or dyn.rtt is not None):
            return []
        ssh = self._router()
        return dummynet_timeline(self.testbed.bottleneck, dyn, duration_s, ssh.aqm or "fifo",
                                 dict(ssh.aqm_args))

    def _snapshot(self, when: str) -> str:
        router = self.testbed.bottleneck.router
        text = "".join(self.testbed.run(router, ["ipfw", what, "show"], check=False).stdout
                       for what in ("pipe", "sched"))
        if self.tel is not None:
            (self.tel / f"dummynet-{when}.txt").write_text(text)
        return text

    def stop(self) -> dict[str, Any]:
        timer, self.timer = self.timer, None
        schedule = dynamic_run.finish_timer(self, timer, self.run_dir, remove_remote=True)
        self._snapshot("stop")
        return {"datapath": self.name, "per_packet": False, **schedule}

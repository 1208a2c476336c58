"""One runner per flow: it starts the flow's receiver and sender on their hosts, releases the
sender on schedule, stops what is left, and turns the tools' output into the flow's report.

The project's tools (tcp_sender, udp_cbr, scapy_sender) start early and wait for their start
time on stdin, so Python's start-up never delays a flow; iperf3 (iperf.py) starts when due.
Tools write JSON to stdout and 'ready'/errors to stderr, kept as logs/<flow>-<role>.{json,log}
in the run directory.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.spec import units
from orchestrator.testbed.base import Testbed
from orchestrator.workloads import prague, tcpinfo
from orchestrator.workloads.ccroute import MARK_OWN_CC
from orchestrator.workloads.ect1 import MARK_ECT1
from orchestrator.workloads.plan import ECN_VALUE, FlowPlan

ROOT = Path(__file__).resolve().parents[2]  # where `python -m orchestrator...` resolves


class Runner:
    prelaunch = True  # the sender starts early and waits for its start time on stdin

    def __init__(self, testbed: Testbed, plan: FlowPlan, logs: Path) -> None:
        self.tb, self.plan, self.logs = testbed, plan, logs
        self.server: subprocess.Popen | None = None
        self.client: subprocess.Popen | None = None
        self.scheduled_start = self.scheduled_end = 0.0
        self.spawned_at = self.exited_at = 0.0

    # ---- processes
    def _popen(self, role: str, host: str, argv: list[str], stdin: bool = False) -> subprocess.Popen:
        with open(self._path(role, "json"), "wb") as out, open(self._path(role, "log"), "wb") as err:
            return self.tb.popen(host, argv, tag=f"flow:{self.plan.name}:{role}", stdout=out, stderr=err,
                                 stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, cwd=ROOT)

    def _path(self, role: str, ext: str) -> Path:
        return self.logs / f"{self.plan.name}-{role}.{ext}"

    def _says_ready(self, role: str) -> bool:
        return b"ready" in self._path(role, "log").read_bytes()

    def _exited(self, proc: subprocess.Popen | None, role: str) -> None:
        if proc is not None and proc.poll() is not None:
            log = self._path(role, "log").read_text(errors="replace").strip()
            raise UserError(f"flow {self.plan.name!r}: the {role} exited early "
                            f"({proc.returncode}): {log[-600:]}")

    def start_server(self) -> None:
        self.server = self._popen("server", self.plan.spec.dst, self.server_argv())

    def server_ready(self) -> bool:
        self._exited(self.server, "server")
        return self._says_ready("server")

    def launch(self) -> None:
        if self.prelaunch:
            self.client = self._popen("client", self.plan.spec.src, self.client_argv(), stdin=True)

    def client_ready(self) -> bool:
        if not self.prelaunch:
            return True
        self._exited(self.client, "client")
        return self._says_ready("client")

    def release(self, t0: float) -> None:
        """Fix the schedule; a prelaunched sender learns its start time now."""
        p = self.plan
        self.scheduled_start = t0 + p.start_s
        self.scheduled_end = self.scheduled_start + p.duration_s if p.duration_s is not None else 0.0
        if self.prelaunch and self.client is not None and self.client.stdin is not None:
            self.spawned_at = time.time()
            try:
                self.client.stdin.write(f"{self.scheduled_start:.6f}\n".encode())
                self.client.stdin.close()
            except BrokenPipeError:  # it died since it said ready: its report will say so
                pass

    def tick(self, now: float) -> None:
        """Called often while the scenario runs (iperf3 starts from here)."""

    def running(self) -> bool:
        if self.client is None:
            return not self.prelaunch  # iperf3 not started yet
        if self.client.poll() is None:
            return True
        self.exited_at = self.exited_at or time.time()
        return False

    def stop_client(self) -> None:
        if self.client is not None:
            self.exited_at = self.exited_at or time.time()
            self.tb.stop(self.client)

    def stop_server(self, wait: float = 1.0) -> None:
        """Give the receiver `wait` seconds to finish by itself, then SIGTERM it."""
        if self.server is None:
            return
        try:
            self.server.wait(wait)
        except subprocess.TimeoutExpired:
            pass
        self.tb.stop(self.server)

    def kill(self) -> None:
        for proc in (self.client, self.server):
            if proc is not None:
                if proc.stdin is not None and not proc.stdin.closed:
                    proc.stdin.close()
                self.tb.stop(proc, timeout=2)

    # ---- reports
    def _json(self, role: str) -> dict[str, Any] | None:
        text = self._path(role, "json").read_text(errors="replace").strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    def base_report(self) -> dict[str, Any]:
        p, spec = self.plan, self.plan.spec
        return {"name": p.name, "kind": spec.kind, "src": spec.src, "dst": spec.dst, "cc": p.cc,
                "ecn": p.ecn, "tool": p.tool, "proto": p.proto,
                "scheduled_start": self.scheduled_start, "scheduled_end": self.scheduled_end or None,
                "start": None, "end": None, "ports": {"sport": p.sport, "dport": p.dport},
                "bytes_sent": None, "bytes_received": None, "retransmits": None,
                "tcp_info_columns": tcpinfo.COLUMNS, "tcp_info": [], "raw": None,
                "notes": list(p.notes), "error": None}

    def report(self) -> dict[str, Any]:
        raise NotImplementedError

    def server_argv(self) -> list[str]:
        raise NotImplementedError

    def client_argv(self) -> list[str]:
        raise NotImplementedError


def _tool(tb: Testbed, host: str, name: str, *args: str) -> list[str]:
    """A project tool on host, run by the interpreter that has the project there."""
    return [tb.python(host), "-m", f"orchestrator.workloads.{name}", *args]


def _amount(plan: FlowPlan) -> list[str]:
    if plan.duration_s is not None:
        return ["--duration", f"{plan.duration_s:g}"]
    return ["--size", str(int(units.size_bytes(plan.spec.size)))]


class TcpSenderRunner(Runner):
    """L4S flows: the project's sender, its congestion control set before connect()."""

    def server_argv(self) -> list[str]:
        return _tool(self.tb, self.plan.spec.dst, "tcp_sender", "server", "--port", str(self.plan.dport),
                     "--cc", str(self.plan.cc),
                     "--mark", hex(MARK_OWN_CC))

    def client_argv(self) -> list[str]:
        p = self.plan
        mark = MARK_OWN_CC | (MARK_ECT1 if p.spec.kind == "l4s" and p.cc != "prague" else 0)
        argv = _tool(self.tb, p.spec.src, "tcp_sender", "client", "--dst", p.dst_ip, "--port", str(p.dport),
                     "--sport",
                     str(p.sport), "--cc", str(p.cc), "--mark", hex(mark), *_amount(p), "--start-at", "-")
        if p.spec.rate_bps:
            argv += ["--rate", f"{p.spec.rate_bps:g}"]
        return argv

    def report(self) -> dict[str, Any]:
        r = self.base_report()
        cli, srv = self._json("client") or {}, self._json("server") or {}
        rows = cli.pop("tcp_info", [])
        r.update(start=cli.get("start"), end=cli.get("end"), cc=cli.get("cc", r["cc"]),
                 bytes_sent=cli.get("bytes_sent"), bytes_received=srv.get("bytes_received"),
                 retransmits=cli.get("retransmits"), tcp_info=rows, negotiated=cli.get("ecn"),
                 raw={"client": cli, "server": srv}, error=cli.get("error") or srv.get("error"))
        r["cc_variant"] = prague.variant(r["cc"])  # decoded from the name the socket gave
        if not cli:
            r["error"] = "the sender left no report (see logs/)"
        return r


class UdpRunner(Runner):
    """Constant bit rate, unresponsive."""

    def server_argv(self) -> list[str]:
        return _tool(self.tb, self.plan.spec.dst, "udp_cbr", "recv", "--port", str(self.plan.dport))

    def client_argv(self) -> list[str]:
        p = self.plan
        return _tool(self.tb, p.spec.src, "udp_cbr", "send", "--dst", p.dst_ip, "--port", str(p.dport),
                     "--sport", str(p.sport),
                     "--rate", f"{p.spec.rate_bps:g}", "--size", str(p.spec.packet_size),
                     "--ecn", str(ECN_VALUE[p.ecn]), *_amount(p), "--start-at", "-")

    def report(self) -> dict[str, Any]:
        r = self.base_report()
        cli, srv = self._json("client") or {}, self._json("server") or {}
        sent, got = cli.get("packets_sent") or 0, srv.get("packets_received") or 0
        r.update(start=cli.get("start"), end=cli.get("end"), bytes_sent=cli.get("bytes_sent"),
                 bytes_received=srv.get("bytes_received"), packets_sent=sent, packets_received=got,
                 loss=round(1 - got / sent, 6) if sent else None, ecn_counts=srv.get("ecn_counts"),
                 owd_ms=srv.get("owd_ms"), tcp_info_columns=[], raw={"client": cli, "server": srv},
                 error=None if cli else "the sender left no report (see logs/)")
        return r


class ScapyRunner(UdpRunner):
    """Crafted packets, counted by udp_cbr's receiver."""

    def client_argv(self) -> list[str]:
        p, spec = self.plan, self.plan.spec
        argv = _tool(self.tb, p.spec.src, "scapy_sender", "--pattern", spec.pattern, "--src", p.src_ip,
                     "--dst", p.dst_ip,
                     "--port", str(p.dport), "--sport", str(p.sport), "--size", str(spec.packet_size),
                     "--ecn", str(ECN_VALUE.get(p.ecn, 0)), "--seed", str(p.index + 1),
                     *_amount(p), "--start-at", "-")
        if spec.rate_bps:
            argv += ["--rate", f"{spec.rate_bps:g}"]
        return argv

    def report(self) -> dict[str, Any]:
        r = super().report()
        if self.plan.spec.pattern == "short-flows":
            r["ports"]["sport"] = None  # one source port per short flow
        r["pattern"] = self.plan.spec.pattern
        return r

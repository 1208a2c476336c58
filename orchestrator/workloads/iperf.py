"""Classic bulk TCP flows through iperf3, with an explicit congestion control (-C).

iperf3 3.12 sets -C after connect(), so classic ECN comes from the sender namespace's
net.ipv4.tcp_ecn (kernelstate.py) and AccECN cannot be negotiated (FACTS.md). iperf3 starts
when due, a few RTTs early for its control handshake; its -J report is kept whole as 'raw',
and its per-interval RTT and cwnd become the report's tcp_info rows.
"""

from __future__ import annotations

import math
import signal
import time
from typing import Any

from orchestrator.spec import units
from orchestrator.workloads import tcpinfo
from orchestrator.workloads.runners import Runner

IPERF3_INTERVAL = 0.1  # iperf3 -i, seconds


class IperfRunner(Runner):
    prelaunch = False
    interrupted = False

    def server_argv(self) -> list[str]:
        return ["iperf3", "-s", "-1", "-J", "-p", str(self.plan.dport)]

    def server_ready(self) -> bool:
        self._exited(self.server, "server")
        out = self.tb.run(self.plan.spec.dst, ["ss", "-Hltn", f"sport = :{self.plan.dport}"], check=False)
        return bool(out.stdout.strip())

    def client_argv(self) -> list[str]:
        p = self.plan
        argv = ["iperf3", "-c", p.dst_ip, "-p", str(p.dport), "--cport", str(p.sport), "-J",
                "-i", f"{IPERF3_INTERVAL:g}", "--connect-timeout", "3000"]
        if p.duration_s is not None:
            argv += ["-t", str(math.ceil(p.duration_s))]  # whole seconds only; see tick()
        else:
            argv += ["-n", str(int(units.size_bytes(p.spec.size)))]
        if p.cc:
            argv += ["-C", p.cc]
        if p.spec.rate_bps:
            argv += ["-b", f"{int(p.spec.rate_bps)}"]
        return argv

    def setup_s(self) -> float:
        """How early to start iperf3: its control connection, parameter exchange and data
        connection take about three RTTs before data flows."""
        bn = self.tb.bottleneck
        rtt = bn.rtt_s + 2 * sum(bn.extra_delay_s.get(ip, 0.0) for ip in (self.plan.src_ip, self.plan.dst_ip))
        return 0.02 + 3 * rtt

    def tick(self, now: float) -> None:
        if self.client is None and now >= self.scheduled_start - self.setup_s():
            self.spawned_at = time.time()
            self.client = self._popen("client", self.plan.spec.src, self.client_argv())
        elif self._cut_short() and not self.interrupted and now >= self.scheduled_end:
            # iperf3 -t takes whole seconds: a fractional duration ends by SIGINT, after
            # which iperf3 still writes its JSON (with an 'interrupt' error, dropped below)
            self.interrupted = True
            if self.client is not None and self.client.poll() is None:
                self.tb.signal(self.client, signal.SIGINT)  # iperf3 itself, wherever it runs

    def _cut_short(self) -> bool:
        d = self.plan.duration_s
        return d is not None and d != math.ceil(d)

    def report(self) -> dict[str, Any]:
        r = self.base_report()
        raw = self._json("client")
        r.update(start=self.spawned_at or None, end=self.exited_at or None, raw=raw)
        if raw is None:
            r["error"] = "iperf3 left no JSON report (see logs/)"
            return r
        if raw.get("error") and not (self.interrupted and "interrupt" in raw["error"]):
            r["error"] = f"iperf3: {raw['error']}"
        end, start = raw.get("end", {}), raw.get("start", {})
        conn = (start.get("connected") or [{}])[0]
        r["ports"]["sport"] = conn.get("local_port", r["ports"]["sport"])
        sent, received = end.get("sum_sent", {}), end.get("sum_received", {})
        r.update(cc=end.get("sender_tcp_congestion", r["cc"]), bytes_sent=sent.get("bytes"),
                 bytes_received=received.get("bytes"), retransmits=sent.get("retransmits"),
                 tcp_info=iperf_rows(raw, r["start"] or 0.0))
        return r


def iperf_rows(raw: dict[str, Any], t_start: float) -> list[list[float | int | None]]:
    """iperf3's intervals as tcp_info rows (what iperf3 has: RTT, cwnd, rate, retransmits)."""
    rows: list[list[float | int | None]] = []
    retrans = 0
    for iv in raw.get("intervals", []):
        s = (iv.get("streams") or [{}])[0]
        mss = max(int(s.get("pmtu", 1500)) - 52, 1)  # 40 bytes of headers, 12 of timestamps
        retrans += int(s.get("retransmits", 0))
        row: list[float | int | None] = [None] * len(tcpinfo.COLUMNS)
        row[:5] = [round(t_start + float(s.get("end", 0.0)), 6), s.get("rtt"),
                   round(int(s.get("snd_cwnd", 0)) / mss), s.get("bits_per_second"), retrans]
        rows.append(row)
    return rows

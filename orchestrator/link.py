"""The testbed's baseline link on the bottleneck router: a rate shaper and the base delay.

`up` installs both; a datapath that brings its own queue (ebpf, kernel) replaces the shaper's
leaf, and the nfqueue datapath removes the shaper and emulates the rate itself. The base delay
stays in place for every datapath.

Shaper: HTB root 1:, class 1:1 at the link rate, FIFO leaf 10: with the buffer (pfifo when the
spec gave packets, bfifo otherwise). HTB counts L2 bytes, as a real link would.
Delay: netem where the kernel has it, else the project's NFQUEUE delay line (delayline.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

from orchestrator.testbed import Testbed

DELAY_QUEUE_FORWARD = 0
DELAY_QUEUE_REVERSE = 1


def _rate(bps: float) -> str:
    return f"{int(bps)}bit"


def install_shaper(tb: Testbed, leaf: list[str] | None = None) -> None:
    """HTB at the link rate on the bottleneck egress, with a FIFO leaf (or the given leaf qdisc
    arguments, e.g. ['pie', 'target', '15ms'])."""
    bn = tb.bottleneck
    dev = bn.egress
    # `replace` of an HTB root that exists is refused ("Change operation not supported"), and
    # a datapath may have left another shape, so start from an empty root
    tb.run(bn.router, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
    tb.run(bn.router, ["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
                       "default", "1"])
    tb.run(bn.router, ["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1",
                       "htb", "rate", _rate(bn.rate_bps), "ceil", _rate(bn.rate_bps)])
    if leaf is None:
        leaf = (["pfifo", "limit", str(bn.buffer_pkts)] if bn.buffer_in == "packets"
                else ["bfifo", "limit", str(bn.buffer_bytes)])
    tb.run(bn.router, ["tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *leaf])


def remove_shaper(tb: Testbed) -> None:
    bn = tb.bottleneck
    tb.run(bn.router, ["tc", "qdisc", "del", "dev", bn.egress, "root"], check=False)


def start_delay(tb: Testbed) -> None:
    bn = tb.bottleneck
    if bn.delay_mode == "netem":
        _netem(tb)
    elif bn.forward_delay_s > 0 or bn.reverse_delay_s > 0 or bn.extra_delay_s:
        _delay_line(tb)


def _netem(tb: Testbed) -> None:
    """netem on the router: reverse delay (plus per-host extras) towards each sender, forward
    delay towards the receivers would collide with HTB, so it goes on the receivers' side."""
    bn = tb.bottleneck
    router = tb.host(bn.router)
    for iface in router.interfaces:
        if iface.name == bn.egress:
            continue
        extra = 2 * bn.extra_delay_s.get(tb.host(iface.peer).address, 0.0)
        _netem_on(tb, bn.router, iface.name, bn.reverse_delay_s + extra)
    receiver = tb.host(next(i.peer for i in router.interfaces if i.name == bn.egress))
    _netem_on(tb, receiver.name, receiver.iface_to(bn.router).name, bn.forward_delay_s)


def _netem_on(tb: Testbed, host: str, dev: str, delay_s: float) -> None:
    if delay_s > 0:
        tb.run(host, ["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay",
                      f"{delay_s * 1e6:.0f}us", "limit", "100000"])


def _delay_line(tb: Testbed) -> None:
    bn = tb.bottleneck
    config = {"base_s": {str(DELAY_QUEUE_FORWARD): bn.forward_delay_s,
                         str(DELAY_QUEUE_REVERSE): bn.reverse_delay_s},
              "extra_s": {ip: 2 * d for ip, d in bn.extra_delay_s.items()}}
    path = tb.state_dir / "delayline.json"
    path.write_text(json.dumps(config))
    log = open(tb.state_dir / "delayline.log", "wb")
    proc = tb.popen(bn.router, [_python(), "-m", "orchestrator.delayline", str(path)],
                    tag="delayline", stdout=log, stderr=subprocess.STDOUT)
    _wait_ready(tb, proc, tb.state_dir / "delayline.log")
    rules = []
    if bn.forward_delay_s > 0:
        rules += [(dev, DELAY_QUEUE_FORWARD) for dev in bn.ingress]
    rules.append((bn.egress, DELAY_QUEUE_REVERSE))
    for dev, queue in rules:
        tb.run(bn.router, ["iptables", "-t", "mangle", "-A", "FORWARD", "-i", dev, "-j", "NFQUEUE",
                           "--queue-num", str(queue), "--queue-bypass"])


def _wait_ready(tb: Testbed, proc: subprocess.Popen, log_path) -> None:
    import time

    from orchestrator.errors import UserError

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if b"ready" in log_path.read_bytes():
            return
        if proc.poll() is not None:
            raise UserError(f"the delay line exited: {log_path.read_text()[-800:]}")
        time.sleep(0.02)
    raise UserError(f"the delay line did not start in 15 s: {log_path.read_text()[-800:]}")


def _python() -> str:
    import sys

    return sys.executable


def stop_delay(tb: Testbed) -> None:
    """Stop the delay line (or remove netem) and its rules."""
    bn = tb.bottleneck
    if bn.delay_mode == "netem":
        for iface in tb.host(bn.router).interfaces:
            if iface.name != bn.egress:
                tb.run(bn.router, ["tc", "qdisc", "del", "dev", iface.name, "root"], check=False)
        receiver = tb.host(next(i.peer for i in tb.host(bn.router).interfaces if i.name == bn.egress))
        tb.run(receiver.name, ["tc", "qdisc", "del", "dev", receiver.iface_to(bn.router).name, "root"],
               check=False)
        return
    tb.run(bn.router, ["iptables", "-t", "mangle", "-F", "FORWARD"], check=False)
    for proc in [p for p in tb.processes if p.tag == "delayline"]:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        _wait_gone(proc.pid)
    tb.processes = [p for p in tb.processes if p.tag != "delayline"]
    tb.save()


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    """Wait until pid has exited (its NFQUEUE queues are only free then), else kill it."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    os.killpg(pid, signal.SIGKILL)


def reconfigure(tb: Testbed, rate_bps: float | None = None, rtt_s: float | None = None,
                buffer: str | int | None = None) -> None:
    """Change the bottleneck's rate, base RTT or buffer in place (for sweeps)."""
    from orchestrator.spec import _parse_buffer

    bn = tb.bottleneck
    if rate_bps is not None:
        bn.rate_bps = rate_bps
    if rtt_s is not None:
        share = bn.forward_delay_s / bn.rtt_s if bn.rtt_s > 0 else 0.0
        bn.forward_delay_s, bn.reverse_delay_s = rtt_s * share, rtt_s * (1 - share)
    if buffer is not None or rate_bps is not None or rtt_s is not None:
        spec_buffer = buffer if buffer is not None else tb.extra.get("buffer_spec", "1.5bdp")
        tb.extra["buffer_spec"] = spec_buffer
        bn.buffer_pkts, bn.buffer_bytes = _parse_buffer(spec_buffer, bn.rate_bps, bn.rtt_s)
        bn.buffer_in = "packets" if isinstance(spec_buffer, int) or str(spec_buffer).strip().lower() \
            .endswith(("p", "pkts", "packets")) else "bytes"
    tb.save()
    install_shaper(tb)
    if rtt_s is not None:
        stop_delay(tb)
        start_delay(tb)

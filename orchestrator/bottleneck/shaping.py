"""The testbed's baseline link on the bottleneck router: a rate shaper and the base delay.

`up` installs both; a datapath that brings its own queue (ebpf, kernel) replaces the shaper's
leaf, and the nfqueue datapath removes the shaper and emulates the rate itself. The base delay
stays in place for every datapath.

Shaper: HTB root 1:, class 1:1 at the link rate, FIFO leaf 10: with the buffer (pfifo when the
spec gave packets, bfifo otherwise). HTB counts L2 bytes, as a real link would.
Delay: netem where the kernel has it, else the project's NFQUEUE delay line (delayline.py).
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path

from orchestrator import strictjson
from orchestrator.spec import units
from orchestrator.testbed.base import Bottleneck, Host, Testbed

# (host, argv, check): a command built here, run by run_steps or recorded for Ansible
# (providers/ssh/hostvars.py); check=False marks one that may fail (a delete of nothing)
Step = tuple[str, list[str], bool]

REPO = Path(__file__).resolve().parents[2]
DELAY_QUEUE_FORWARD = 0
DELAY_QUEUE_REVERSE = 1


def _rate(bps: float) -> str:
    return f"{int(bps)}bit"


def shaper_commands(bn: Bottleneck, leaf: list[str] | None = None) -> list[Step]:
    """HTB at the link rate on the bottleneck egress, with a FIFO leaf (or the given leaf qdisc
    arguments, e.g. ['pie', 'target', '15ms'])."""
    dev = bn.egress
    # `replace` of an HTB root that exists is refused ("Change operation not supported"), and
    # a datapath may have left another shape, so start from an empty root
    if leaf is None:
        leaf = (["pfifo", "limit", str(bn.buffer_pkts)] if bn.buffer_in == "packets"
                else ["bfifo", "limit", str(bn.buffer_bytes)])
    return [(bn.router, ["tc", "qdisc", "del", "dev", dev, "root"], False),
            (bn.router, ["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
                         "default", "1"], True),
            (bn.router, ["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1",
                         "htb", "rate", _rate(bn.rate_bps), "ceil", _rate(bn.rate_bps)], True),
            (bn.router, ["tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *leaf], True)]


def run_steps(tb: Testbed, steps: list[Step]) -> None:
    """Run commands built here on the testbed's hosts, in order."""
    for host, argv, check in steps:
        tb.run(host, argv, check=check)


def install_shaper(tb: Testbed, leaf: list[str] | None = None) -> None:
    """The shaper (shaper_commands) on the bottleneck router."""
    run_steps(tb, shaper_commands(tb.bottleneck, leaf))


def remove_shaper(tb: Testbed) -> None:
    bn = tb.bottleneck
    tb.run(bn.router, ["tc", "qdisc", "del", "dev", bn.egress, "root"], check=False)


def start_delay(tb: Testbed) -> None:
    bn = tb.bottleneck
    if bn.delay_mode == "netem":
        run_steps(tb, netem_commands(bn, tb.hosts))
    elif bn.forward_delay_s > 0 or bn.reverse_delay_s > 0 or bn.extra_delay_s or \
            tb.extra.get("delay_schedule"):
        _delay_line(tb)


def netem_commands(bn: Bottleneck, hosts: Mapping[str, Host]) -> list[Step]:
    """netem on the router: reverse delay (plus per-host extras) towards each sender, forward
    delay towards the receivers would collide with HTB, so it goes on the receivers' side."""
    router = hosts[bn.router]
    out = []
    for iface in router.interfaces:
        if iface.name == bn.egress:
            continue
        extra = 2 * bn.extra_delay_s.get(hosts[iface.peer].address, 0.0)
        out += _netem_on(bn.router, iface.name, bn.reverse_delay_s + extra)
    receiver = hosts[next(i.peer for i in router.interfaces if i.name == bn.egress)]
    return out + _netem_on(receiver.name, receiver.iface_to(bn.router).name, bn.forward_delay_s)


def _netem_on(host: str, dev: str, delay_s: float) -> list[Step]:
    if delay_s <= 0:
        return []
    return [(host, ["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay",
                    f"{delay_s * 1e6:.0f}us", "limit", "100000"], True)]


def delay_comment(tb: Testbed) -> str:
    """Every delay-line rule carries it: stop_delay deletes only ours, on any router."""
    return f"tb-{tb.name}-delay"


def delay_config(tb: Testbed) -> dict:
    bn = tb.bottleneck
    out = {"base_s": {str(DELAY_QUEUE_FORWARD): bn.forward_delay_s,
                      str(DELAY_QUEUE_REVERSE): bn.reverse_delay_s},
           "extra_s": {ip: 2 * d for ip, d in bn.extra_delay_s.items()}}
    schedule = tb.extra.get("delay_schedule")  # a run's rtt schedule (bottleneck/dynamic_run.py)
    if schedule:
        out.update(schedule=schedule, applied_path=schedule["applied_path"])
    return out


def delay_rules(tb: Testbed) -> list[list[str]]:
    """The mangle FORWARD rules (without -A/-D) that send both directions to the delay line."""
    bn = tb.bottleneck
    schedule = tb.extra.get("delay_schedule")
    forward = bn.forward_delay_s > 0 or (schedule and any(f > 0 for _, f, _ in schedule["steps"]))
    pairs = [(dev, DELAY_QUEUE_FORWARD) for dev in bn.ingress] if forward else []
    pairs.append((bn.egress, DELAY_QUEUE_REVERSE))
    return [["FORWARD", "-i", dev, "-m", "comment", "--comment", delay_comment(tb), "-j", "NFQUEUE",
             "--queue-num", str(q), "--queue-bypass"] for dev, q in pairs]


def _delay_line(tb: Testbed) -> None:
    bn = tb.bottleneck
    # the config goes where the router reads files (this machine for namespaces, else pushed)
    path = f"{tb.workdir(bn.router, tb.state_dir)}/delayline.json"
    tb.put(bn.router, path, strictjson.dumps(delay_config(tb)))
    log_path = tb.state_dir / "delayline.log"
    with open(log_path, "wb") as log:  # the process's stdout, through ssh on remote routers
        # run from the project (its place on the router, for ssh) so `-m` finds this checkout's
        # modules, as the nfqueue link does
        proc = tb.popen(bn.router, [tb.python(bn.router), "-m", "orchestrator.bottleneck.delayline", path],
                        tag="delayline", stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    _wait_ready(tb, proc, log_path)
    for rule in delay_rules(tb):
        tb.run(bn.router, ["iptables", "-t", "mangle", "-A", *rule])


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
    _delete_delay_rules(tb)
    # whoever started it: this process, an earlier one (the state file), or the ssh playbook
    tb.stop_tagged("delayline")


def _delete_delay_rules(tb: Testbed) -> None:
    """Delete the rules carrying our comment (a real router may have rules of its own)."""
    router = tb.bottleneck.router
    res = tb.run(router, ["iptables", "-t", "mangle", "-S", "FORWARD"], check=False)
    for line in res.stdout.splitlines():
        args = shlex.split(line)
        if args[:1] == ["-A"] and delay_comment(tb) in args:
            tb.run(router, ["iptables", "-t", "mangle", "-D", *args[1:]], check=False)


def reconfigure(tb: Testbed, rate_bps: float | None = None, rtt_s: float | None = None,
                buffer: str | int | None = None) -> None:
    """Change the bottleneck's rate, base RTT or buffer in place (for sweeps)."""
    bn = tb.bottleneck
    if bn.delay_mode == "dummynet":
        from orchestrator.errors import UserError

        raise UserError("changing the link in place is not supported on a FreeBSD (dummynet) router; "
                        "bring the testbed up again with the new rate, RTT or buffer")
    if rate_bps is not None:
        bn.rate_bps = rate_bps
    if rtt_s is not None:
        share = bn.forward_delay_s / bn.rtt_s if bn.rtt_s > 0 else 0.0
        bn.forward_delay_s, bn.reverse_delay_s = rtt_s * share, rtt_s * (1 - share)
    if buffer is not None or rate_bps is not None or rtt_s is not None:
        spec_buffer = buffer if buffer is not None else tb.extra.get("buffer_spec", "1.5bdp")
        tb.extra["buffer_spec"] = spec_buffer
        bn.buffer_pkts, bn.buffer_bytes = units.buffer_size(spec_buffer, bn.rate_bps, bn.rtt_s)
        bn.buffer_in = "packets" if isinstance(spec_buffer, int) or str(spec_buffer).strip().lower() \
            .endswith(("p", "pkts", "packets")) else "bytes"
    tb.save()
    install_shaper(tb)
    if rtt_s is not None:
        stop_delay(tb)
        start_delay(tb)

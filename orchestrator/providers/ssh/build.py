"""The ssh provider: hosts are existing machines (cloud VMs, a lab, a FreeBSD router) reached
over SSH (transport) and set up with Ansible (playbooks/, through ansible-runner). This module
builds and tears down; the registry (orchestrator.providers) finds it by the name `ssh`.
"""

from __future__ import annotations

import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from orchestrator.errors import UserError
from orchestrator.providers import teardown
from orchestrator.providers.ssh import ansible, hostvars
from orchestrator.providers.ssh.connect import connect
from orchestrator.providers.ssh.settings import endpoint
from orchestrator.providers.ssh.transport import SshTestbed
from orchestrator.spec.schema import Spec
from orchestrator.testbed import state, topology
from orchestrator.testbed.base import Bottleneck, Host, is_same_process
from orchestrator.testbed.state import state_dir_of

TESTBED = SshTestbed


def check_hosts(tb: SshTestbed) -> dict[str, str]:
    """Connect to every host at once; fail with every problem listed. Returns uname -s."""
    spec = tb.spec()

    def one(host: str) -> str:
        client = connect(spec, host)
        try:
            _, out, _ = client.exec_command("uname -s", timeout=spec.ssh.connect_timeout_s if spec.ssh else 5)
            return out.read().decode().strip()
        finally:
            client.close()

    results: dict[str, str] = {}
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=min(16, len(tb.hosts))) as pool:
        futures = {h: pool.submit(one, h) for h in tb.hosts}
        for host, fut in futures.items():
            try:
                results[host] = fut.result()
            except UserError as e:
                errors.append(str(e))
    for host, system in results.items():
        want = {"linux": "Linux", "freebsd": "FreeBSD"}[endpoint(spec, host).os]
        if system != want:
            errors.append(f"{host}: the spec says os {endpoint(spec, host).os!r}, "
                          f"but the host runs {system!r}")
    if errors:
        raise UserError("cannot use the hosts:\n  " + "\n  ".join(errors))
    return results


# ---------------------------------------------------------------- building


def plan(spec: Spec) -> tuple[dict[str, Host], Bottleneck]:
    """The topology with each machine's own interface names (`ssh.interfaces`). The delay
    mode is decided on the remote kernels once they are probed (hostvars.delay_mode)."""
    def iface_name(host: str, peer: str) -> str:
        ssh = spec.host(host).ssh
        assert ssh is not None
        return ssh.interfaces[peer]

    return topology.plan(spec, iface_name, spec.bottleneck.delay_mode)


def probe(tb: SshTestbed) -> dict[str, dict[str, Any]]:
    """What each host's kernel offers: congestion controls; on a Linux router, which qdiscs."""
    def one(name: str) -> dict[str, Any]:
        ep = tb.endpoint(name)
        info: dict[str, Any] = {"release": tb.run(name, ["uname", "-r"]).stdout.strip()}
        if ep.os == "linux":
            info["ccs"] = tb.run(name, ["cat", "/proc/sys/net/ipv4/tcp_available_congestion_control"]) \
                .stdout.split()
            if name == tb.bottleneck.router:
                info["qdiscs"] = [q for q in hostvars.PROBED_QDISCS + _wanted_qdisc(tb)
                                  if _has_qdisc(tb, name, q)]
        else:
            res = tb.run(name, ["sysctl", "-n", "net.inet.tcp.cc.available"], check=False)
            info["ccs"] = [line.split()[0] for line in res.stdout.splitlines()
                           if line.strip() and not line.startswith("CCmod")]
        return info

    return dict(zip(tb.hosts, _each(one, list(tb.hosts)), strict=True))


def _each(fn: Any, items: list[str]) -> list[Any]:
    """fn over items in parallel (hosts answer independently); the first error is raised."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(items)))) as pool:
        return list(pool.map(fn, items))


def _wanted_qdisc(tb: SshTestbed) -> list[str]:
    aqm = tb.spec().host(tb.bottleneck.router).ssh.aqm  # type: ignore[union-attr]
    return [aqm] if aqm and aqm != "fifo" else []


def _has_qdisc(tb: SshTestbed, host: str, kind: str) -> bool:
    """Try the qdisc as the root of the bottleneck egress (the shaper replaces it anyway)."""
    dev = tb.bottleneck.egress
    ok = tb.run(host, ["tc", "qdisc", "replace", "dev", dev, "root", kind], check=False).returncode == 0
    tb.run(host, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
    return ok


def up(spec: Spec) -> SshTestbed:
    """Check the hosts, probe them, run the playbooks. On failure the hosts are cleaned."""
    if (state_dir_of(spec.name) / "state.json").exists():
        raise UserError(f"a testbed named {spec.name!r} is already up; run `testbed down {spec.name}` first")
    hosts, bottleneck = plan(spec)
    tb = SshTestbed(spec.name, spec.model_dump(mode="json"), hosts, bottleneck,
                    extra={"buffer_spec": spec.bottleneck.buffer, "pidfiles": {}})
    tb.status = "building"
    tb.save()  # first, so `down` can clean up after a kill -9 in the middle of `up`
    try:
        check_hosts(tb)  # fails fast, before anything changes on a host
        _each(tb.start_master, list(tb.hosts))
    except BaseException:
        tb.stop_masters()
        shutil.rmtree(tb.state_dir, ignore_errors=True)
        raise
    try:
        kernel = probe(tb)
        tb.bottleneck.delay_mode = hostvars.delay_mode(tb, kernel)
        tb.extra.update(kernel=kernel, host_vars=hostvars.host_vars(tb, kernel))
        tb.save()
        ansible.run_playbook(tb, "site.yml").raise_for_failure("testbed up")
    except BaseException:
        try:
            down(spec.name, tb)
        except UserError:
            pass  # the first error is the one to show
        raise
    tb.status = "up"
    tb.save()
    return tb


# ---------------------------------------------------------------- tearing down


def leftover_names() -> set[str]:
    """None: an ssh testbed leaves nothing on the hosts that names it without a state file."""
    return set()


def down(name: str, tb: SshTestbed | None = None) -> list[str]:
    """Run the teardown playbook on every host and forget the testbed. A host that cannot be
    reached is reported (the others are cleaned) and the state is kept for another try.
    `tb`: the testbed as its state file describes it (providers.down reads it)."""
    if not (state_dir_of(name) / "state.json").exists():
        return []
    if tb is None:
        tb = state.restore(SshTestbed, state.read(name))
    assert isinstance(tb, SshTestbed)
    removed: list[str] = []
    for proc in tb.processes:  # local ssh clients: their remote processes stop with them
        if not is_same_process(proc):
            continue  # gone, or the pid now belongs to someone else
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            removed.append(f"process {proc.pid} ({proc.tag} on {proc.host})")
        except (ProcessLookupError, PermissionError):
            pass
    tb.processes = []
    tb.cleanups = teardown.replay(tb, tb.cleanups, tb.state_dir, removed)
    tb.save()
    result = ansible.run_playbook(tb, "teardown.yml") if tb.extra.get("host_vars") else None
    tb.stop_masters()
    if result is not None and not result.ok:
        tb.status = "teardown-failed"
        tb.save()
        raise UserError(f"testbed {name!r}: {result.summary()}; the other hosts are clean. Run "
                        f"`testbed down {name}` again when they are back (state kept in {tb.state_dir})")
    removed += [f"host {h} cleaned" for h in tb.hosts] if result is not None else []
    shutil.rmtree(tb.state_dir, ignore_errors=True)
    return removed

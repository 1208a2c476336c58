"""The ssh provider against real sshd: namespace hosts that run sshd with generated keys,
described as existing hosts, set up with Ansible (`testbed up`), used, and torn down; and the
ways it must fail fast: unreachable host, wrong key, changed or unknown host key."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import needs_root, run_cli, unique_name
from sshlab import SshLab, keygen

pytestmark = [pytest.mark.integration, needs_root]

HOSTS = [("s1", "sender"), ("s2", "sender"), ("r1", "router"), ("rx", "receiver")]
LINKS = [("s1", "r1"), ("s2", "r1"), ("r1", "rx")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = SshLab(unique_name("sshp"), tmp_path_factory.mktemp("sshlab"), HOSTS, LINKS)
    try:
        yield lab.start()
    finally:
        lab.stop()


def write_spec(lab: SshLab, tmp_path: Path, name: str, **kw: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(lab.spec_yaml(name, **kw))
    return path


def down_quietly(name: str) -> None:
    run_cli("down", name, timeout=180)


def key_body(path: Path) -> list[str]:
    """The base64 lines of a private key: what must never be written anywhere."""
    return [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_up_exec_popen_down_leaves_hosts_clean(lab, tmp_path):
    from orchestrator import providers as tbmod
    from orchestrator.testbed import state

    name = unique_name("sshe")
    spec = write_spec(lab, tmp_path, name)
    before = {h: lab.snapshot(h) for h in lab.hosts}
    t0 = time.monotonic()
    res = run_cli("up", str(spec), timeout=240)
    up_s = time.monotonic() - t0
    try:
        assert res.returncode == 0, res.stderr
        assert "delay by nfqueue" in res.stdout
        # the base RTT comes from the delay line the playbook started on r1 (no netem here)
        ping = run_cli("exec", "--testbed", name, "s1", "--", "ping", "-c", "5", "-i", "0.2", "10.0.3.2")
        assert ping.returncode == 0, ping.stderr
        avg = float(re.search(r"= [\d.]+/([\d.]+)/", ping.stdout).group(1))
        assert 19.0 < avg < 30.0, ping.stdout
        # the shaper and the host settings are there, on the "remote" hosts
        assert "htb" in lab.exec("r1", "tc", "qdisc", "show", "dev", "d-rx").stdout
        assert lab.exec("r1", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        assert "congctl cubic" in lab.exec("s1", "ip", "route").stdout
        status = json.loads(run_cli("status", name, "--json").stdout)[0]
        assert status["provider"] == "ssh" and status["status"] == "up"

        tb = tbmod.load(name)
        _check_run_and_popen(lab, tb)
        _check_collect(lab, tb, tmp_path)
        _check_capture_playbook(tb, tmp_path)
        _check_no_key_material(lab, tb)
    finally:
        t1 = time.monotonic()
        res = run_cli("down", name, timeout=180)
        down_s = time.monotonic() - t1
    assert res.returncode == 0, res.stderr
    assert not (state.STATE_ROOT / name).exists()
    for host in lab.hosts:
        assert lab.snapshot(host) == before[host], host
        assert "sleep 60" not in _processes(lab, host)
    assert not (lab.remote_dir / name).exists()
    assert str(lab.remote_dir) not in _mounts_seen_by_sshd(lab, "r1")  # its bpffs is unmounted
    print(f"ssh provider: up {up_s:.1f} s, down {down_s:.1f} s")


def _mounts_seen_by_sshd(lab: SshLab, host: str) -> str:
    """/proc/mounts in the mount namespace of host's sshd (where its sessions mount things)."""
    sshd = lab.exec(host, "pgrep", "-f", f"sshd -D -f {lab.root / host}").stdout.split()[0]
    return subprocess.run(["nsenter", "-t", sshd, "-m", "cat", "/proc/mounts"], capture_output=True,
                          text=True, check=True).stdout


def _processes(lab: SshLab, host: str) -> str:
    pids = lab.exec(host, "ip", "netns", "pids", lab.ns(host), check=False).stdout.split()
    names = []
    for pid in pids:
        try:
            names.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip())
        except OSError:
            pass
    return " ".join(names)


def _check_run_and_popen(lab: SshLab, tb) -> None:
    from orchestrator.errors import UserError

    # run: the argv reaches the remote side intact, never through a shell's word splitting
    out = tb.run("s1", ["printf", "%s|", "a b", "$HOME", "'q'", ";true"]).stdout
    assert out == "a b|$HOME|'q'|;true|"
    with pytest.raises(UserError, match=r"s1: command failed \(1\)"):
        tb.run("s1", ["false"])
    # a bpffs of the testbed's own on the router, mounted once, gone after down
    path = tb.bpffs()
    assert tb.bpffs() == path and str(path).startswith(str(lab.remote_dir))
    assert tb.run("r1", ["grep", "-c", f" {path} bpf ", "/proc/mounts"]).stdout.strip() == "1"
    # popen: a background process over its own connection; stop() ends it on the host
    proc = tb.popen("rx", ["sleep", "60"], tag="test-sleep")
    deadline = time.monotonic() + 5
    while "sleep 60" not in _processes(lab, "rx") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "sleep 60" in _processes(lab, "rx")
    assert tb.stop(proc) == -signal.SIGTERM
    assert "sleep 60" not in _processes(lab, "rx")
    # stdin reaches the remote process (the workloads send a start time that way)
    cat = tb.popen("s1", ["cat"], tag="test-cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = cat.communicate(b"start 123\n", timeout=10)
    assert out == b"start 123\n" and cat.returncode == 0
    tb.stop(cat)
    # a controller that dies (its ssh client killed) leaves nothing running on the host
    orphan = tb.popen("s2", ["sleep", "60"], tag="test-orphan")
    time.sleep(0.5)
    orphan.kill()
    deadline = time.monotonic() + 5
    while "sleep 60" in _processes(lab, "s2") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "sleep 60" not in _processes(lab, "s2")
    tb.stop(orphan)


def _check_collect(lab: SshLab, tb, tmp_path: Path) -> None:
    local = tmp_path / "run" / "telemetry"
    remote = tb.workdir("r1", local)
    assert remote.startswith(str(lab.remote_dir))
    tb.run("r1", ["sh", "-c", 'mkdir -p "$1/sub" && echo hi > "$1/a.txt" && echo yo > "$1/sub/b.txt"',
                  "sh", remote])
    got = tb.collect("r1", remote, local)
    assert sorted(p.relative_to(local).as_posix() for p in got) == ["a.txt", "sub/b.txt"]
    assert (local / "sub" / "b.txt").read_text() == "yo\n"


def _check_capture_playbook(tb, tmp_path: Path) -> None:
    """capture.yml: tcpdump on the hosts' testbed interfaces, pcaps fetched to the controller."""
    import dpkt

    from orchestrator.providers.ssh import ansible

    ansible.run_playbook(tb, "capture.yml", {"capture_action": "start"}, limit="s1,rx") \
        .raise_for_failure("capture start")
    tb.run("s1", ["ping", "-c", "5", "-i", "0.05", "10.0.3.2"])
    dest = tmp_path / "captured"
    ansible.run_playbook(tb, "capture.yml", {"capture_action": "stop", "capture_dest": str(dest)},
                         limit="s1,rx").raise_for_failure("capture stop")
    pcaps = sorted(p.name for p in (dest / "pcap").glob("*.pcap"))
    assert pcaps == ["rx-d-r1.pcap", "s1-d-r1.pcap"]
    with open(dest / "pcap" / "s1-d-r1.pcap", "rb") as f:
        icmp = sum(1 for _, buf in dpkt.pcap.Reader(f)
                   if isinstance(dpkt.ethernet.Ethernet(buf).data, dpkt.ip.IP)
                   and dpkt.ethernet.Ethernet(buf).data.p == 1)
    assert icmp >= 10  # 5 requests and 5 replies


def _check_no_key_material(lab: SshLab, tb) -> None:
    secret = key_body(lab.key)
    assert secret
    for path in files_under(tb.state_dir):
        text = path.read_text(errors="replace")
        for line in secret:
            assert line not in text, f"key material in {path}"
    assert str(lab.key) in (tb.state_dir / "state.json").read_text()  # the path, and only it


def _up_fails(spec: Path, *patterns: str, within: float = 15.0) -> str:
    from orchestrator.testbed import state

    t0 = time.monotonic()
    res = run_cli("up", str(spec), timeout=120)
    took = time.monotonic() - t0
    name = spec.stem
    if res.returncode == 0:
        down_quietly(name)
    assert res.returncode == 2, res.stdout + res.stderr
    assert took < within, f"took {took:.1f} s: {res.stderr}"
    for pat in patterns:
        assert re.search(pat, res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    assert not (state.STATE_ROOT / name).exists(), "a failed check must leave no state"
    return res.stderr


def test_unreachable_host_fails_fast(lab, tmp_path):
    lab.exec("rx", "iptables", "-I", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP")
    try:
        err = _up_fails(write_spec(lab, tmp_path, unique_name("sshu")),
                        rf"rx \(root@{re.escape(lab.address('rx'))}:22\): unreachable: no answer within 3 s")
        assert "r1" not in err.split("cannot use the hosts:")[1]  # only the broken host is named
    finally:
        lab.exec("rx", "iptables", "-D", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP")
    lab.stop_sshd("s2")
    try:
        _up_fails(write_spec(lab, tmp_path, unique_name("sshu")), r"s2 .*: unreachable: connection refused")
    finally:
        lab.start_sshd("s2")
        lab.wait_ssh("s2")


def test_wrong_key_fails_fast(lab, tmp_path):
    other = tmp_path / "other_key"
    keygen(other, "not-authorized")
    spec = write_spec(lab, tmp_path, unique_name("sshk"))
    spec.write_text(spec.read_text().replace(f"key_file: {lab.key}", f"key_file: {other}"))
    err = _up_fails(spec, r"authentication failed for user 'root' with key .*other_key")
    for host in lab.hosts:  # every host is named, each with what is wrong
        assert f"{host} (root@{lab.address(host)}:22): authentication failed" in err


def test_changed_host_key_fails_fast(lab, tmp_path):
    new_key = tmp_path / "new_hostkey"
    keygen(new_key, "r1-reinstalled")
    lab.stop_sshd("r1")
    lab.start_sshd("r1", hostkey=new_key)
    lab.wait_ssh("r1")
    try:
        err = _up_fails(write_spec(lab, tmp_path, unique_name("sshh")),
                        r"r1 .*: host key CHANGED: .*known_hosts records SHA256:\S+, "
                        r"the host offers SHA256:\S+",
                        r"ssh-keygen -R")
        assert "s1 (" not in err
    finally:
        lab.stop_sshd("r1")
        lab.start_sshd("r1")
        lab.wait_ssh("r1")


def test_unknown_host_key_fails_unless_insecure(lab, tmp_path):
    from orchestrator.providers import ssh
    from orchestrator.spec import schema as specmod

    known = tmp_path / "known_hosts"
    known.write_text("".join(line + "\n" for line in lab.known_hosts.read_text().splitlines()
                             if not line.startswith(lab.address("s2") + " ")))
    spec = write_spec(lab, tmp_path, unique_name("sshn"))
    spec.write_text(spec.read_text().replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {known}"))
    _up_fails(spec, rf"s2 .*: host key unknown: {re.escape(lab.address('s2'))} is not in .*known_hosts",
              "insecure_ignore_host_keys")
    # the explicit opt-out for throwaway labs: no known_hosts at all, any host key accepted
    text = spec.read_text().replace(f"known_hosts: {known}", "insecure_ignore_host_keys: true")
    parsed = specmod.parse(text, "insecure.yaml")
    hosts, bn = ssh.plan(parsed)
    tb = ssh.SshTestbed(parsed.name, parsed.model_dump(mode="json"), hosts, bn)
    assert ssh.check_hosts(tb) == {h: "Linux" for h in lab.hosts}
    argv = tb.ssh_argv("s2")
    assert "StrictHostKeyChecking=no" in argv and "UserKnownHostsFile=/dev/null" in argv
    assert tb.run("s2", ["true"]).returncode == 0

"""Runs on hosts that do not share the controller's files: over the ssh provider, every output
a host writes (pcaps, the router's telemetry) goes to the host's workdir under ssh.remote_dir,
not to the run directory, and is brought back from there at the end; config files are pushed;
and an RTT change in place (sweeps) replaces the delay line the playbook started."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import needs_root, run_cli, unique_name
from sshlab import SshLab

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_root]

HOSTS = [("s1", "sender"), ("r1", "router"), ("rx", "receiver")]
LINKS = [("s1", "r1"), ("r1", "rx")]
SCENARIO = """\
scenario:
  duration: 4s
  flows:
    - {name: l4s, kind: l4s, src: s1, dst: rx, duration: 4s}
    - {name: cbr, kind: udp, src: s1, dst: rx, rate: 2mbit, duration: 3s}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = SshLab(unique_name("sshw"), tmp_path_factory.mktemp("sshremote"), HOSTS, LINKS)
    try:
        yield lab.start()
    finally:
        lab.stop()


def ping_ms(lab: SshLab, tb) -> float:
    out = lab.exec("s1", "ping", "-c", "5", "-i", "0.2", tb.host("rx").address).stdout
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


def test_outputs_come_back_from_the_hosts_workdirs(lab, tmp_path):
    from orchestrator import providers as tbmod
    from orchestrator.bottleneck import shaping as link
    from orchestrator.experiment.run import Run, RunConfig

    name = unique_name("sshw")
    spec_file = tmp_path / "ssh.yaml"
    spec_file.write_text(lab.spec_yaml(name, bottleneck="{rate: 20mbit, rtt: 20ms, buffer: 1.5bdp}",
                                       scenario=SCENARIO))
    before = {h: lab.snapshot(h) for h in lab.hosts}
    res = run_cli("up", str(spec_file), timeout=240)
    assert res.returncode == 0, res.stderr
    try:
        tb = tbmod.load(name)
        assert not tb.shares_files("r1")
        collected: list[tuple[str, str, Path, list[Path]]] = []
        real_collect = tb.collect

        def watch(host, remote_dir, local_dir):  # the real copy, observed
            files = real_collect(host, remote_dir, local_dir)
            collected.append((host, remote_dir, Path(local_dir), files))
            return files

        tb.collect = watch
        run = Run(tb, tb.spec().scenario, RunConfig(policy="dualpi2", datapath="nfqueue",
                                                    results_root=tmp_path / "results"))
        run_dir = run.execute()
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "complete", manifest.get("abort_reason")
        # every host wrote under ssh.remote_dir, never into the run directory, and it came back
        for host, remote, local, files in collected:
            assert remote.startswith(str(lab.remote_dir)) and str(run_dir) not in remote, remote
            assert files and all(local in f.parents for f in files), (host, files)
        pcaps = {f.name for h, _, _, files in collected for f in files if f.suffix == ".pcap"}
        assert pcaps == {p.name for p in (run_dir / "pcap").glob("*.pcap")} and len(pcaps) == 2
        router = [f for h, _, _, files in collected if h == "r1" for f in files]
        assert any(f.parent.name == "packets" and f.suffix == ".parquet" for f in router)
        assert any(f.name == "nfqueue-counters.json" for f in router)
        assert manifest["datapath_counters"].get("link_died") is None
        assert sorted(p.name for p in (run_dir / "flows").glob("*.json")) == ["cbr.json", "l4s.json"]
        l4s = json.loads((run_dir / "flows" / "l4s.json").read_text())
        assert l4s["error"] is None and l4s["bytes_sent"] > 1e6, l4s
        # what was brought back is removed from the hosts: a sweep does not fill their disks
        left = [p for p in lab.remote_dir.rglob("*") if p.suffix in (".pcap", ".parquet")]
        assert not left, left
        assert not any(c["kind"] == "struct_ops" for c in tbmod.load(name).cleanups)

        # an RTT change in place stops the playbook's delay line and starts one at the new RTT
        assert 17 < ping_ms(lab, tb) < 30
        link.reconfigure(tb, rtt_s=0.060)
        assert [p.tag for p in tbmod.load(name).processes].count("delayline") == 1
        assert 55 < ping_ms(lab, tb) < 75
        link.reconfigure(tb, rtt_s=0.020)
        assert 17 < ping_ms(lab, tb) < 30
    finally:
        down = run_cli("down", name, timeout=180)
    assert down.returncode == 0, down.stderr
    for host in lab.hosts:
        assert lab.snapshot(host) == before[host], host

"""A real run over the ssh provider: the same scenario on namespace hosts reached over SSH and
on the local provider gives the same figures within a stated tolerance, results come back to
results/ the same way, and a host lost mid-run aborts the run and leaves the others clean."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import dumbbell_yaml, needs_root, run_cli, unique_name
from sshlab import SshLab

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_root]

HOSTS = [("s1", "sender"), ("s2", "sender"), ("r1", "router"), ("rx", "receiver")]
LINKS = [("s1", "r1"), ("s2", "r1"), ("r1", "rx")]
LINK = "{rate: 20mbit, rtt: 20ms, buffer: 1.5bdp}"
SCENARIO = """\
scenario:
  duration: 6s
  flows:
    - {name: l4s, kind: l4s, src: s1, dst: rx, duration: 6s}
    - {name: cubic, kind: tcp, src: s2, dst: rx, cc: cubic, duration: 6s}
"""
# How close the ssh run must come to the local one (one 6 s run each, 2 shared cores: the
# split between the two flows is noisy, the aggregate and the queue delays are not).
TOLERANCE = {"utilization": 0.10,  # absolute
             "goodput_total_rel": 0.15,  # relative, sum over the flows
             "delay_p50_ms": (3.0, 0.30),  # per class: max(absolute ms, relative)
             "l4s_p95_ms": (2.0, 0.50)}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = SshLab(unique_name("sshr"), tmp_path_factory.mktemp("sshrun"), HOSTS, LINKS)
    try:
        yield lab.start()
    finally:
        lab.stop()


def run_once(tb, results: Path, policy: str = "dualpi2") -> Path:
    from orchestrator.experiment.run import Run, RunConfig

    run = Run(tb, tb.spec().scenario, RunConfig(policy=policy, datapath="nfqueue", results_root=results))
    try:
        return run.execute()
    except BaseException:
        if run.dir is not None:
            return run.dir
        raise


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def close(a: float, b: float, abs_: float, rel: float) -> bool:
    return abs(a - b) <= max(abs_, rel * abs(b))


def test_ssh_run_matches_the_local_provider(lab, tmp_path):
    from orchestrator import providers as tbmod
    from orchestrator.providers import netns
    from orchestrator.spec import schema as specmod

    name = unique_name("sshm")
    spec_file = tmp_path / "ssh.yaml"
    spec_file.write_text(lab.spec_yaml(name, bottleneck=LINK, scenario=SCENARIO))
    res = run_cli("up", str(spec_file), timeout=240)
    assert res.returncode == 0, res.stderr
    try:
        ssh_dir = run_once(tbmod.load(name), tmp_path / "results")
    finally:
        down = run_cli("down", name, timeout=180)
    assert down.returncode == 0, down.stderr
    # the same scenario on the local provider
    local_name = unique_name("sshl")
    text = dumbbell_yaml(local_name, rate="20mbit", rtt="20ms", scenario=SCENARIO)
    ltb = netns.up(specmod.parse(text, "local.yaml"))
    try:
        local_dir = run_once(ltb, tmp_path / "results")
    finally:
        run_cli("down", local_name)

    remote, local = summary(ssh_dir), summary(local_dir)
    assert remote["status"] == local["status"] == "complete"
    manifest = json.loads((ssh_dir / "manifest.json").read_text())
    assert manifest["provider"] == "ssh" and manifest["status"] == "complete"
    # results come back the same way: pcaps, flow reports, bottleneck telemetry
    assert sorted(p.name for p in (ssh_dir / "flows").glob("*.json")) == ["cubic.json", "l4s.json"]
    assert list((ssh_dir / "pcap").glob("*.pcap"))
    assert list((ssh_dir / "telemetry" / "packets").glob("*.parquet"))
    # no key material in anything the run wrote
    secret = [x for x in lab.key.read_text().splitlines() if x and not x.startswith("-----")]
    for path in ssh_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".txt", ".log", ".csv", ".html"):
            body = path.read_text(errors="replace")
            assert not any(line in body for line in secret), path

    report = {k: (remote.get(k), local.get(k)) for k in ("utilization", "jain_index")}
    print(f"ssh vs local: {json.dumps(report)}; queue delay ssh {remote['queue_delay_ms']} "
          f"local {local['queue_delay_ms']}")
    assert abs(remote["utilization"] - local["utilization"]) <= TOLERANCE["utilization"]
    total = [sum(f["goodput_mbps"] for f in s["flows"]) for s in (remote, local)]
    assert close(total[0], total[1], 0.0, TOLERANCE["goodput_total_rel"]), total
    for cls in ("l4s", "classic"):
        a, b = remote["queue_delay_ms"][cls]["p50"], local["queue_delay_ms"][cls]["p50"]
        assert close(a, b, *TOLERANCE["delay_p50_ms"]), (cls, a, b)
    a, b = remote["queue_delay_ms"]["l4s"]["p95"], local["queue_delay_ms"]["l4s"]["p95"]
    assert close(a, b, *TOLERANCE["l4s_p95_ms"]), (a, b)


def test_host_lost_mid_run_aborts_it_and_the_others_are_cleaned(lab, tmp_path):
    from orchestrator import providers as tbmod
    from orchestrator.testbed import state

    name = unique_name("sshx")
    spec_file = tmp_path / "ssh.yaml"
    spec_file.write_text(lab.spec_yaml(name, bottleneck=LINK, scenario=SCENARIO.replace("6s", "10s")))
    before = {h: lab.snapshot(h) for h in lab.hosts}
    res = run_cli("up", str(spec_file), timeout=240)
    assert res.returncode == 0, res.stderr
    cut = threading.Timer(4.0, lambda: subprocess.run(["ip", "link", "set", lab.root_veth("rx"), "down"]))
    try:
        cut.start()
        t0 = time.monotonic()
        run_dir = run_once(tbmod.load(name), tmp_path / "results")
        took = time.monotonic() - t0
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "aborted", manifest.get("abort_reason")
        assert "rx" in (manifest.get("abort_reason") or ""), manifest.get("abort_reason")
        assert took < 90
        # down cleans every host it can reach, names the one it cannot, and keeps the state
        down = run_cli("down", name, timeout=240)
        assert down.returncode == 2 and "rx unreachable" in down.stderr, down.stderr
        for host in ("s1", "s2", "r1"):
            assert lab.snapshot(host) == before[host], host
        assert (state.STATE_ROOT / name / "state.json").exists()
    finally:
        cut.cancel()
        subprocess.run(["ip", "link", "set", lab.root_veth("rx"), "up"])
        lab.wait_ssh("rx")
    try:
        down = run_cli("down", name, timeout=240)  # the host is back: now it is cleaned too
        assert down.returncode == 0, down.stderr
        assert lab.snapshot("rx") == before["rx"]
        assert not (state.STATE_ROOT / name).exists()
        from orchestrator.workloads import l4s

        assert l4s.registered(f"l4s_{name}"[:l4s.NAME_MAX]) == []  # the dead run's CC is gone
    finally:  # whatever failed above, leave no state behind (the lab's hosts go with it)
        shutil.rmtree(state.STATE_ROOT / name, ignore_errors=True)

"""A dynamic link over the ssh provider: the run's t0 reaches the router, the schedule runs
there (the nfqueue link per packet, the delay line with its RTT schedule, the HTB timer for
the kernel datapath) and every record comes back into the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import needs_root, run_cli, unique_name
from sshlab import SshLab

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_root]

HOSTS = [("s1", "sender"), ("r1", "router"), ("rx", "receiver")]
LINKS = [("s1", "r1"), ("r1", "rx")]
LINK = ("{rate: [{at: 0s, rate: 20mbit}, {at: 2s, rate: 5mbit}], "
        "rtt: [{at: 0s, rtt: 20ms}, {at: 2s, rtt: 40ms}], buffer: 1.5bdp}")
SCENARIO = "scenario: {duration: 4s, flows: [{name: bulk, kind: tcp, src: s1, dst: rx, cc: cubic}]}\n"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = SshLab(unique_name("sshd"), tmp_path_factory.mktemp("sshdyn"), HOSTS, LINKS)
    try:
        yield lab.start()
    finally:
        lab.stop()


def test_dynamic_link_on_a_remote_router(lab, tmp_path):
    from orchestrator import providers
    from orchestrator.experiment.run import Run, RunConfig

    name = unique_name("sshy")
    spec_file = tmp_path / "ssh.yaml"
    spec_file.write_text(lab.spec_yaml(name, bottleneck=LINK, scenario=SCENARIO))
    res = run_cli("up", str(spec_file), timeout=240)
    assert res.returncode == 0, res.stderr
    assert "the link changes during each run: rate 20mbit -> 5mbit, rtt 20ms -> 40ms" in res.stdout
    try:
        tb = providers.load(name)
        dirs = {}
        for datapath, policy in (("nfqueue", "dualpi2"), ("kernel", "fifo")):
            run = Run(tb, tb.spec().scenario, RunConfig(policy=policy, datapath=datapath,
                                                         results_root=tmp_path / "results"))
            dirs[datapath] = run.execute()
    finally:
        down = run_cli("down", name, timeout=180)
    assert down.returncode == 0, down.stderr
    for datapath, d in dirs.items():
        tel = Path(d) / "telemetry"
        cap = json.loads((tel / "capacity.json").read_text())
        assert [r for _, r in cap["steps"]] == [20e6, 5e6], datapath
        assert [t - cap["t0_epoch"] for t, _ in cap["steps"][:1]] == pytest.approx([0.0], abs=0.1)
        delays = json.loads((tel / "delay-changes.json").read_text())
        assert [x["base_s"]["1"] for x in delays] == pytest.approx([0.02, 0.04]), datapath
        summary = json.loads((Path(d) / "summary.json").read_text())
        assert summary["status"] == "complete"
        if datapath == "nfqueue":
            assert summary["dynamics"]["changes"][0]["kind"] == "drop"
        else:  # a kernel qdisc keeps no per-packet log: no per-change delays, and it says so
            assert "dynamic link: no per-packet telemetry, so no per-change figures" in summary["notes"]
    kernel = json.loads((Path(dirs["kernel"]) / "telemetry/capacity.json").read_text())
    # t0 is fixed early enough to reach the router: every change on time, not a copy late
    assert kernel["late_ms_p99"] is not None and kernel["late_ms_p99"] < 100

"""Every bad input of a dynamic link, through the CLI: a non-zero exit, one line naming the
file, the key and what was expected, no traceback, and nothing left behind. A schedule longer
than the run is allowed and said once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import dumbbell_yaml, needs_root, run_cli, unique_name

STEP = "[{at: 0s, rate: 50mbit}, {at: 10s, rate: 10mbit}, {at: 20s, rate: 50mbit}]"


def one_error_line(res: subprocess.CompletedProcess, file: Path, key: str, words: str) -> None:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert lines[0].startswith(f"error: {file}: {key}: "), lines[0]
    assert words in lines[0], lines[0]


def nothing_left(name: str) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"tb-{name}-" not in netns
    assert not Path(f"/run/testbed/{name}").exists()


UP_CASES = {
    "times going backwards": ("rate: [{at: 0s, rate: 50mbit}, {at: 10s, rate: 10mbit}, "
                              "{at: 5s, rate: 20mbit}]", "rate[2].at", "times must increase"),
    "zero rate": ("rate: [{at: 0s, rate: 50mbit}, {at: 5s, rate: 0mbit}]", "rate[1].rate",
                  "expected a positive rate"),
    "negative rate": ("rate: [{at: 0s, rate: -5mbit}]", "rate[0].rate", "expected a non-negative value"),
    "empty trace": ("trace: t.trace", "trace", "t.trace: the trace is empty"),
    "non-numeric trace": ("trace: n.trace", "trace",
                          "n.trace: line 2: expected a whole number of milliseconds"),
    "csv with a word": ("trace: c.csv", "trace", "c.csv: line 3: expected 'time_s,rate_mbps'"),
    "bad loss": ("rate: 50mbit, loss: {model: gilbert-elliott, p: 2%}", "loss.r", "required key is missing"),
}


@pytest.mark.parametrize("case", UP_CASES)
def test_bad_link_in_a_testbed_file(tmp_path, case):
    text, key, words = UP_CASES[case]
    (tmp_path / "t.trace").write_text("")
    (tmp_path / "n.trace").write_text("3\nabc\n")
    (tmp_path / "c.csv").write_text("time_s,rate_mbps\n0,10\n5,fast\n")
    name = unique_name("dbad")
    yaml_text = dumbbell_yaml(name).replace("rate: 50mbit, rtt: 20ms", f"{text}, rtt: 20ms")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    res = run_cli("up", str(path))
    one_error_line(res, path, f"links[2].bottleneck.{key}", words)
    nothing_left(name)


@needs_root
@pytest.mark.integration
def test_bad_link_in_a_scenario_at_run_time(netns_testbed, tmp_path):
    name = unique_name("dbad")
    netns_testbed(dumbbell_yaml(name))
    results = tmp_path / "results"
    flows = "flows: [{name: bulk, kind: tcp, src: s1, dst: rx, cc: cubic}]\n"
    # a trace of 101 packets per ms: 1212 Mbit/s on average, more than nfqueue carries
    (tmp_path / "fast.trace").write_text("1\n" * 101)
    scen = tmp_path / "fast.yaml"
    scen.write_text(f"duration: 3s\nlink: {{trace: fast.trace}}\n{flows}")
    res = run_cli("run", "--testbed", name, "--policy", "fifo", "--scenario", str(scen),
                  "--results", str(results))
    one_error_line(res, scen, "link.trace", "the trace's average rate is 1212.0 Mbit/s; the nfqueue "
                                            "datapath carries at most 600 Mbit/s")
    assert not results.exists() or not any(results.iterdir())
    state = json.loads(Path(f"/run/testbed/{name}/state.json").read_text())
    assert [p["tag"] for p in state["processes"]] == ["delayline"] and "link_dynamics" not in state["extra"]
    # loss on a datapath without netem, and a backwards schedule in a scenario file
    scen.write_text(f"duration: 3s\nlink: {{rate: 20mbit, loss: 1%}}\n{flows}")
    res = run_cli("run", "--testbed", name, "--policy", "fifo", "--datapath", "kernel",
                  "--scenario", str(scen), "--results", str(results))
    one_error_line(res, scen, "link.loss", "expected --datapath nfqueue")
    steps = "[{at: 0s, rate: 5mbit}, {at: 0s, rate: 6mbit}]"
    scen.write_text(f"duration: 3s\nlink: {{rate: {steps}}}\n{flows}")
    res = run_cli("run", "--testbed", name, "--policy", "fifo", "--scenario", str(scen),
                  "--results", str(results))
    one_error_line(res, scen, "link.rate[1].at", "times must increase")
    scen.write_text(f"duration: 3s\nlink: {{speed: 5mbit}}\n{flows}")
    res = run_cli("run", "--testbed", name, "--policy", "fifo", "--scenario", str(scen),
                  "--results", str(results))
    one_error_line(res, scen, "link.speed", "unknown key")
    assert not results.exists() or not any(results.iterdir())


@needs_root
@pytest.mark.integration
@pytest.mark.slow
def test_a_schedule_longer_than_the_run_is_said_once(netns_testbed, tmp_path):
    name = unique_name("dlong")
    netns_testbed(dumbbell_yaml(name))
    scen = tmp_path / "long.yaml"
    scen.write_text("duration: 3s\n"
                    "flows: [{name: bulk, kind: tcp, src: s1, dst: rx, cc: cubic}]\n"
                    f"sweep: {{policy: [fifo, pie],\n"
                    f"        link: [{{rate: {STEP}}}, {{rate: 20mbit, rtt: 40ms}}]}}\n")
    res = run_cli("run", "--testbed", name, "--scenario", str(scen), "--results", str(tmp_path / "r"),
                  timeout=240)
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {scen}: link.rate: the schedule runs to 20 s but the run lasts 3 s; "
                        "changes after that are not applied"]
    # four runs: the swept link of each is in its manifest, the static one set for its run
    manifests = [json.loads(p.read_text()) for p in sorted((tmp_path / "r").glob("sweep-*/*/manifest.json"))]
    assert len(manifests) == 4
    static = [m for m in manifests if m["link_dynamics"] is None]
    assert len(static) == 2 and all(m["link_rate_bps"] == 20e6 and m["rtt_ms"] == 40 for m in static)
    steps = [m["link_dynamics"]["rate"] for m in manifests if m["link_dynamics"]]
    assert steps == [[[0.0, 50e6, 0.0], [10.0, 10e6, 0.0], [20.0, 50e6, 0.0]]] * 2
    # the testbed's own link is back after the runs
    state = json.loads(Path(f"/run/testbed/{name}/state.json").read_text())
    assert state["bottleneck"]["rate_bps"] == 50e6 and "link_dynamics" not in state["extra"]


@needs_root
@pytest.mark.integration
@pytest.mark.slow
def test_a_testbed_file_with_a_schedule(tmp_path):
    """The testbed's own link is dynamic: `up` says so, and a run without any override
    applies the schedule."""
    name = unique_name("dspec")
    path = tmp_path / "tb.yaml"
    path.write_text(dumbbell_yaml(name, senders=1).replace(
        "rate: 50mbit", "rate: [{at: 0s, rate: 20mbit}, {at: 1s, rate: 5mbit}]") +
        "scenario: {duration: 2s, flows: [{name: bulk, kind: tcp, src: s1, dst: rx, cc: cubic}]}\n")
    try:
        res = run_cli("up", str(path))
        assert res.returncode == 0, res.stderr
        assert "20 Mbit/s" in res.stdout
        assert "the link changes during each run: rate 20mbit -> 5mbit" in res.stdout
        res = run_cli("run", "--testbed", name, "--policy", "fifo", "--results", str(tmp_path / "r"),
                      timeout=120)
        assert res.returncode == 0, res.stderr
        run_dir = next((tmp_path / "r").glob("*-fifo-*"))
        cap = json.loads((run_dir / "telemetry/capacity.json").read_text())
        assert [r for _, r in cap["steps"]] == [20e6, 5e6]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["dynamics"]["changes"][0]["kind"] == "drop"
        assert "dynamic link: capacity changes" in res.stdout
    finally:
        run_cli("down", name)
    nothing_left(name)

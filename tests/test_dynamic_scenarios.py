"""The shipped dynamic scenarios load against the default testbed, and `testbed trace`
makes and reads traces through the CLI."""

from __future__ import annotations

import json

import pytest

from orchestrator.bottleneck import dynamic_run
from orchestrator.commands.run import load_scenario
from orchestrator.spec import schedule as sm
from orchestrator.spec import schema as specmod

from conftest import ROOT, run_cli

SHIPPED = ["step-50-10-50", "satellite-leo", "cellular-1", "cellular-2", "cellular-3"]


class _Tb:
    """What load_scenario and for_run need of a testbed that is up: its spec."""

    name = "mininet"

    def __init__(self) -> None:
        self.spec_obj = specmod.load(ROOT / "testbeds/mininet-like.yaml")
        self.spec_data = self.spec_obj.model_dump(mode="json")

    def spec(self):
        return self.spec_obj


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_load(name: str) -> None:
    tb = _Tb()
    scenario = load_scenario(str(ROOT / "scenarios" / f"{name}.yaml"), tb)
    dyn_json, static = dynamic_run.for_run(tb, scenario)
    assert dyn_json is not None and static["rate_bps"] > 0
    dyn = dynamic_run.LinkDynamics.from_json(dyn_json)
    assert dyn.check_run("nfqueue", scenario.duration_s) == []  # no schedule outlasts its run
    if name.startswith("cellular"):
        assert dyn.trace is not None and dyn.trace.period_ms == 30000
        assert static["rtt_s"] == pytest.approx(0.04) and static["buffer"] == "200p"
    if name == "satellite-leo":
        assert [s.at for s in dyn.rate.steps] == [0, 15, 30, 45] == [s.at for s in dyn.rtt.steps]
    if name == "step-50-10-50":
        assert dyn.changes() == [(10.0, 50e6, 10e6), (20.0, 10e6, 50e6)]


def test_trace_generate_and_show(tmp_path) -> None:
    out = tmp_path / "t.trace"
    res = run_cli("trace", "generate", "--seed", "4", "--duration", "5s", "--out", str(out))
    assert res.returncode == 0, res.stderr
    trace = sm.load_mahimahi(out)
    assert trace.period_ms == 5000
    assert f"{trace.per_period} delivery opportunities" in res.stdout
    meta = json.loads((tmp_path / "t.trace.json").read_text())
    assert meta["seed"] == 4 and meta["opportunities"] == trace.per_period
    again = tmp_path / "u.trace"
    run_cli("trace", "generate", "--seed", "4", "--duration", "5s", "--out", str(again), check=True)
    assert again.read_text() == out.read_text()  # seeded
    res = run_cli("trace", "show", str(out))
    assert res.returncode == 0 and f"period 5 s, {trace.per_period} opportunities" in res.stdout


@pytest.mark.parametrize("args, words", [
    (["--levels", "1,x"], "--levels: expected rates in Mbit/s"),
    (["--stay", "2"], "--stay: expected a probability"),
    (["--duration", "0s"], "--duration: expected a positive duration"),
])
def test_trace_generate_bad_arguments(tmp_path, args: list[str], words: str) -> None:
    res = run_cli("trace", "generate", "--out", str(tmp_path / "t"), *args)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"error: {words}" + res.stderr.strip().split(words, 1)[1]]
    assert not (tmp_path / "t").exists()


def test_sweep_over_links(tmp_path) -> None:
    from orchestrator.errors import SpecError

    (tmp_path / "c.trace").write_text("1\n2\n")
    path = tmp_path / "s.yaml"
    path.write_text("duration: 5s\nflows: [{name: f, kind: tcp, src: s1, dst: rx}]\n"
                    "sweep: {link: [{trace: c.trace}, {rate: [{at: 0s, rate: 5mbit}]}]}\n")
    scenario = load_scenario(str(path), _Tb())
    assert scenario.sweep["link"][0]["trace"] == str((tmp_path / "c.trace").resolve())
    path.write_text("duration: 5s\nflows: [{name: f, kind: tcp, src: s1, dst: rx}]\n"
                    "sweep: {link: [{rate: 5mbit}, {rate: [{at: 0s, rate: 0mbit}]}]}\n")
    with pytest.raises(SpecError, match=r"sweep\.link\[1\]\.rate\[0\]\.rate: expected a positive rate"):
        load_scenario(str(path), _Tb())


def test_a_testbed_files_own_trace_is_named_by_its_key(tmp_path) -> None:
    """A run-time refusal of the testbed file's own link names the file and its key path."""
    from orchestrator.errors import SpecError

    (tmp_path / "fast.trace").write_text("1\n" * 101)  # 1212 Mbit/s
    text = (ROOT / "testbeds/mininet-like.yaml").read_text().replace("rate: 50mbit", "trace: fast.trace")
    (tmp_path / "tb.yaml").write_text(text)
    tb = _Tb()
    tb.spec_obj = specmod.load(tmp_path / "tb.yaml")
    tb.spec_data = tb.spec_obj.model_dump(mode="json")
    dyn_json, static = dynamic_run.for_run(tb, tb.spec_obj.scenario)
    assert static == {}  # no override: the testbed's own link, already in force
    with pytest.raises(SpecError) as e:
        dynamic_run.check(dynamic_run.LinkDynamics.from_json(dyn_json), "nfqueue", 20)
    where = f"{tmp_path / 'tb.yaml'}: links[2].bottleneck.trace: "
    assert str(e.value).startswith(where + "the trace's average rate")

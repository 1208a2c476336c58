"""A bottleneck's dynamics as the spec gives them: parsing with key paths, checks against a
run and a datapath, the configs the datapaths get, and the JSON round trip."""

from __future__ import annotations

import pytest

from orchestrator.spec import dynamic as dm

STEP = [{"at": "0s", "rate": "50mbit"}, {"at": "10s", "rate": "10mbit"}, {"at": "20s", "rate": "50mbit"}]


def test_static_values_are_not_dynamic() -> None:
    d = dm.parse({"rate": "50mbit", "rtt": "20ms"})
    assert not d.dynamic and d.nominal_rate_bps() is None


def test_rate_schedule() -> None:
    d = dm.parse({"rate": STEP})
    assert d.dynamic and d.varies_rate
    assert d.nominal_rate_bps() == 50e6
    assert d.mean_rate_bps(30) == pytest.approx(110e6 / 3)
    assert d.changes() == [(10.0, 50e6, 10e6), (20.0, 10e6, 50e6)]
    assert d.capacity_steps(15) == [(0.0, 50e6), (10.0, 10e6)]
    cfg = d.nfqueue_config("/x/schedule-t0")
    assert cfg == {"kind": "steps", "steps": [[0.0, 50e6, 0.0], [10.0, 10e6, 0.0], [20.0, 50e6, 0.0]],
                   "t0_path": "/x/schedule-t0", "initial_rate_bps": 50e6}


def test_trace_relative_to_the_spec_file(tmp_path) -> None:
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "t").write_text("5\n10\n")  # 2 per 10 ms = 2.4 Mbit/s
    d = dm.parse({"trace": "traces/t"}, tmp_path)
    assert d.trace is not None and d.nominal_rate_bps() == pytest.approx(2.4e6)
    assert d.trace_file == str((tmp_path / "traces" / "t").resolve())
    assert d.nfqueue_config("p")["ms"] == [5, 10]
    assert d.capacity_steps(0.2) == [(0.0, pytest.approx(2.4e6))]
    assert d.rate_key() == "trace"
    back = dm.LinkDynamics.from_json(d.to_json())
    assert back.trace.ms == [5, 10] and back.to_json() == d.to_json()


def test_csv_trace_is_a_rate_schedule(tmp_path) -> None:
    (tmp_path / "r.csv").write_text("time_s,rate_mbps\n0,20\n5,2\n")
    d = dm.parse({"trace": "r.csv"}, tmp_path)
    assert d.trace is None and d.rate.value_at(6) == 2e6
    assert dm.LinkDynamics.from_json(d.to_json()).rate.value_at(6) == 2e6


@pytest.mark.parametrize("data, key, words", [
    ({"rate": [{"at": "0s", "rate": "5mbit"}, {"at": "0s", "rate": "6mbit"}]}, "rate[1].at", "increase"),
    ({"rate": [{"at": "0s", "rate": "0mbit"}]}, "rate[0].rate", "positive"),
    ({"rtt": [{"at": "0s", "rtt": "10ms"}, {"at": "5s"}]}, "rtt[1].rtt", "missing"),
    ({"trace": "nope.trace"}, "trace", "not found"),
    ({"trace": 5}, "trace", "file name"),
    ({"trace": "x", "rate": "5mbit"}, "trace", "not both"),
    ({"loss": "200%"}, "loss", "between"),
    ({"loss": {"model": "gilbert-elliott", "p": "1%"}}, "loss.r", "missing"),
])
def test_errors_name_the_key(tmp_path, data: dict, key: str, words: str) -> None:
    with pytest.raises(dm.DynamicsError) as e:
        dm.parse(data, tmp_path)
    assert e.value.key == key and words in e.value.message


def test_trace_errors_name_file_and_line(tmp_path) -> None:
    (tmp_path / "bad").write_text("1\nfoo\n")
    with pytest.raises(dm.DynamicsError) as e:
        dm.parse({"trace": "bad"}, tmp_path)
    assert e.value.key == "trace" and "bad: line 2: expected a whole number" in e.value.message


def test_check_run(tmp_path) -> None:
    d = dm.parse({"rate": STEP})
    assert d.check_run("nfqueue", 30) == []
    assert d.check_run("nfqueue", 15) == ["rate: the schedule runs to 20 s but the run lasts 15 s; "
                                          "changes after that are not applied"]
    fast = dm.parse({"rate": [{"at": "0s", "rate": "900mbit"}]})
    with pytest.raises(dm.DynamicsError, match="carries at most 600 Mbit/s") as e:
        fast.check_run("nfqueue", 10)
    assert e.value.key == "rate"
    assert fast.check_run("ebpf", 10) == []
    (tmp_path / "t").write_text("1\n" * 100 + "1\n")  # 101 packets per ms: 1212 Mbit/s
    with pytest.raises(dm.DynamicsError, match="average rate is 1212.0 Mbit/s"):
        dm.parse({"trace": "t"}, tmp_path).check_run("ebpf", 10)
    with pytest.raises(dm.DynamicsError, match="nfqueue") as e:
        dm.parse({"loss": "1%"}).check_run("ebpf", 10)
    assert e.value.key == "loss"


def test_delay_steps_split_like_the_static_rtt() -> None:
    d = dm.parse({"rtt": [{"at": "0s", "rtt": "600ms"}, {"at": "15s", "rtt": "40ms"}]})
    assert d.delay_steps(0.25) == [[0.0, pytest.approx(0.15), pytest.approx(0.45)],
                                   [15.0, pytest.approx(0.01), pytest.approx(0.03)]]
    assert d.end_s() == 15.0


def test_t0_file(tmp_path) -> None:
    path = tmp_path / "schedule-t0"
    assert dm.read_t0(path) is None
    assert dm.wait_t0(path, lambda: True) is None  # stopped before the run wrote it
    dm.write_t0(lambda p, text: open(p, "w").write(text), str(path), 1234.5)
    assert dm.read_t0(path) == 1234.5 and dm.wait_t0(path, lambda: False) == 1234.5


def test_describe() -> None:
    d = dm.parse({"rate": STEP, "loss": "1%", "rtt": [{"at": "0s", "rtt": "20ms"}]})
    assert dm.describe(d) == "rate 50mbit -> 10mbit -> 50mbit, rtt 20ms, loss 1.00%"

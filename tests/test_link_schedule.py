"""The schedule model: steps and ramps, Mahimahi and CSV traces, and the per-packet services
the nfqueue link uses. Reference values are worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest

from orchestrator.bottleneck import service as svc_mod
from orchestrator.spec import schedule as sm
from orchestrator.spec.schedule import ScheduleError


def steps(*items: dict) -> sm.Schedule:
    return sm.parse_steps(list(items), "rate")


STEP = [{"at": "0s", "rate": "50mbit"}, {"at": "10s", "rate": "10mbit"}, {"at": "20s", "rate": "50mbit"}]


def test_value_at_steps() -> None:
    s = steps(*STEP)
    assert s.value_at(0) == 50e6
    assert s.value_at(9.999) == 50e6
    assert s.value_at(10.0) == 10e6  # the change is at its stated time
    assert s.value_at(19.9) == 10e6
    assert s.value_at(20.0) == 50e6
    assert s.value_at(1e6) == 50e6  # the last value holds
    assert s.changes() == [(10.0, 50e6, 10e6), (20.0, 10e6, 50e6)]
    assert s.end_s == 20.0


def test_ramp_is_linear() -> None:
    # 10 -> 50 Mbit/s over 20..24 s: at 21 s a quarter of the way, 20 Mbit/s
    s = steps({"at": "0s", "rate": "10mbit"}, {"at": "20s", "rate": "50mbit", "ramp": "4s"})
    assert s.value_at(19.99) == 10e6
    assert s.value_at(21.0) == pytest.approx(20e6)
    assert s.value_at(22.0) == pytest.approx(30e6)
    assert s.value_at(24.0) == 50e6
    assert s.end_s == 24.0
    # integral over the ramp: mean 30 Mbit/s * 4 s = 120 Mbit
    assert s.integral(20, 24) == pytest.approx(120e6)


def test_integral_across_steps() -> None:
    # 9..12 s: 1 s at 50 + 2 s at 10 = 70 Mbit
    assert steps(*STEP).integral(9, 12) == pytest.approx(70e6)
    assert steps(*STEP).mean(0, 30) == pytest.approx((500 + 100 + 500) / 30 * 1e6)


def test_finish_straddles_a_change() -> None:
    # a 1514-byte packet (12112 bit) starting 0.1 ms before the drop: 5000 bit at 50 Mbit/s,
    # the remaining 7112 bit at 10 Mbit/s take 0.7112 ms
    end, _ = steps(*STEP).finish(10 - 1e-4, 12112)
    assert end == pytest.approx(10 + 7.112e-4, abs=1e-12)


def test_finish_in_a_ramp_solves_the_quadratic() -> None:
    # rate r(t) = 10e6 + 10e6 * t on [0, 4) (10 -> 50 Mbit/s): the bits sent in [0, T] are
    # 10e6 T + 5e6 T^2; 15e6 bits -> T = 1
    s = steps({"at": "0s", "rate": "10mbit"}, {"at": "0.000001s", "rate": "50mbit", "ramp": "4s"})
    end, _ = s.finish(1e-6, 15e6)
    assert end - 1e-6 == pytest.approx(1.0, rel=1e-6)


def test_finish_with_hint_matches_without() -> None:
    s = steps(*STEP)
    hint = 0
    t = 0.0
    for _ in range(5000):  # walk a packet train over both changes
        end, hint = s.finish(t, 12112, hint)
        assert end == pytest.approx(s.finish(t, 12112)[0])
        t = end + 0.005
    assert t > 20


def test_steps_for_htb() -> None:
    s = steps({"at": "0s", "rate": "10mbit"}, {"at": "1s", "rate": "30mbit", "ramp": "0.2s"},
              {"at": "2s", "rate": "5mbit"})
    # ramp 10->30 over 1.0..1.2 in two 0.1 s steps: means 15 and 25
    got = s.steps_for(10)
    assert [t for t, _ in got] == pytest.approx([0, 1.0, 1.1, 1.2, 2.0])
    assert [v for _, v in got] == pytest.approx([10e6, 15e6, 25e6, 30e6, 5e6])
    assert s.steps_for(1.05) == [(0.0, 10e6), (1.0, pytest.approx(15e6))]


@pytest.mark.parametrize("bad, key, words", [
    ([{"at": "0s", "rate": "50mbit"}, {"at": "10s", "rate": "10mbit"}, {"at": "5s", "rate": "20mbit"}],
     "[2].at", "times must increase"),
    ([{"at": "0s", "rate": "0mbit"}], "[0].rate", "positive rate"),
    ([{"at": "0s", "rate": "-5mbit"}], "[0].rate", "50mbit"),
    ([{"at": "1s", "rate": "5mbit"}], "[0].at", "first step must be at 0s"),
    ([{"at": "0s"}], "[0].rate", "missing"),
    ([{"at": "0s", "rate": "5mbit", "speed": 1}], "[0].speed", "unknown key"),
    ([{"at": "0s", "rate": "5mbit"}, {"at": "1s", "rate": "6mbit", "ramp": "2s"},
      {"at": "2s", "rate": "1mbit"}], "[2].at", "before the ramp"),
    ([], "", "non-empty list"),
    ("50mbit", "", "non-empty list"),
])
def test_bad_steps(bad: object, key: str, words: str) -> None:
    with pytest.raises(ScheduleError) as e:
        sm.parse_steps(bad, "rate")
    assert e.value.key == key
    assert words in e.value.message


def test_rtt_steps() -> None:
    s = sm.parse_steps([{"at": "0s", "rtt": "600ms"}, {"at": "15s", "rtt": "40ms"}], "rtt")
    assert s.value_at(14) == pytest.approx(0.6)
    assert s.value_at(15) == pytest.approx(0.04)
    with pytest.raises(ScheduleError, match=r"\[0\]\.rtt"):
        sm.parse_steps([{"at": "0s", "rtt": "-1ms"}], "rtt")


# ---- Mahimahi traces


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_mahimahi_counts_and_repeats(tmp_path) -> None:
    # 3 opportunities per 10 ms period (two at 4 ms): 3 * 1500 B per 10 ms = 3.6 Mbit/s
    t = sm.load_mahimahi(write(tmp_path, "t", "4\n4\n10\n"))
    assert t.per_period == 3 and t.period_ms == 10
    assert t.mean_rate_bps == pytest.approx(3.6e6)
    assert t.count(0, 0.010) == 3
    assert t.count(0, 0.0039) == 0 and t.count(0, 0.004) == 2  # 4 ms is not in (0, 3.9 ms]
    assert t.count(0, 0.014) == 5  # 4, 4, 10, 14, 14
    assert t.count(0.004, 0.014) == 3  # (4, 14]: 10, 14, 14
    assert t.count(0, 1.0) == 300
    assert t.next_at(0.0) == (0.004, 0)
    assert t.next_at(0.0041) == (0.010, 2)
    assert t.next_at(0.0101) == (0.014, 3)
    assert t.time_of(5) == pytest.approx(0.020)


@pytest.mark.parametrize("text, words", [
    ("", "empty"), ("\n\n", "empty"), ("5\nabc\n", "line 2"), ("5\n3\n", "backwards"),
    ("0\n0\n", "above 0"), ("1.5\n", "whole number"),
])
def test_bad_mahimahi(tmp_path, text: str, words: str) -> None:
    path = write(tmp_path, "bad.trace", text)
    with pytest.raises(ScheduleError) as e:
        sm.load_mahimahi(path)
    assert words in str(e.value)
    assert str(path) in str(e.value)


def test_missing_trace(tmp_path) -> None:
    with pytest.raises(ScheduleError, match="not found"):
        sm.load_trace(tmp_path / "nope.trace")


def test_csv_trace(tmp_path) -> None:
    s = sm.load_trace(write(tmp_path, "c.csv", "time_s,rate_mbps\n0,20\n2.5,5\n4,40\n"))
    assert isinstance(s, sm.Schedule)
    assert s.value_at(2.4) == 20e6 and s.value_at(2.5) == 5e6 and s.value_at(9) == 40e6
    for text, words in (("0,1\n1,x\n", "line 2"), ("0,1\n0,2\n", "times must increase"),
                        ("0,0\n", "positive rate"), ("1,5\n", "time 0"), ("time,rate\n", "empty"),
                        ("0,5,7\n", "two numbers")):
        with pytest.raises(ScheduleError, match=words):
            sm.load_trace(write(tmp_path, "b.csv", text))


def test_trace_as_schedule_bins(tmp_path) -> None:
    # 10 ms period, 3 packets -> every 100 ms bin holds 30 opportunities = 3.6 Mbit/s
    t = sm.load_mahimahi(write(tmp_path, "t", "4\n4\n10\n"))
    bins = t.rate_bins(0.3)
    assert [b[0] for b in bins] == pytest.approx([0, 0.1, 0.2])
    assert all(r == pytest.approx(3.6e6) for _, r in bins)
    assert t.as_schedule(0.3).steps_for(1) == [(0.0, pytest.approx(3.6e6))]


# ---- services


def test_rate_service_offsets_the_clock() -> None:
    svc = svc_mod.RateService(steps(*STEP), t0=100.0)
    start, end = svc.send(109.9999, 1514)
    assert start == 109.9999
    assert end == pytest.approx(110 + 7.112e-4, abs=1e-9)
    assert svc.rate_at(115) == 10e6


def test_trace_service_follows_mahimahi(tmp_path) -> None:
    # opportunities at 4, 4, 10 ms (repeating every 10 ms), t0 = 1000 s
    t = sm.load_mahimahi(write(tmp_path, "t", "4\n4\n10\n"))
    svc = svc_mod.TraceService(t, 1000.0)
    # a 1514-byte frame = 1500 IP bytes: one whole opportunity each
    assert svc.send(1000.0, 1514) == (pytest.approx(1000.004), pytest.approx(1000.004))
    assert svc.send(1000.004, 1514) == (pytest.approx(1000.004), pytest.approx(1000.004))  # the 2nd at 4 ms
    assert svc.send(1000.004, 1514) == (pytest.approx(1000.010), pytest.approx(1000.010))
    # two 750-byte IP packets share one opportunity; a third waits for the next
    assert svc.send(1000.011, 764)[1] == pytest.approx(1000.014)
    assert svc.send(1000.014, 764)[1] == pytest.approx(1000.014)
    assert svc.send(1000.014, 764)[1] == pytest.approx(1000.014)  # the second one at 14 ms
    assert svc.used == 5
    # a packet arriving after an opportunity cannot use what that one had left
    svc2 = svc_mod.TraceService(t, 0.0)
    svc2.send(0.0, 114)  # 100 IP bytes at 4 ms, 1400 left
    assert svc2.send(0.0045, 114)[1] == pytest.approx(0.010)


def test_trace_service_large_packet_spans_opportunities(tmp_path) -> None:
    t = sm.load_mahimahi(write(tmp_path, "t", "1\n2\n3\n"))
    svc = svc_mod.TraceService(t, 0.0, l2_header=0)
    start, end = svc.send(0.0, 4000)  # 1500 + 1500 + 1000
    assert (start, end) == (pytest.approx(0.001), pytest.approx(0.003))
    assert svc.left == 500


def test_trace_service_delivers_the_trace_under_saturation(tmp_path) -> None:
    # a queue that never empties sends exactly one 1500-byte packet per opportunity
    t = sm.load_mahimahi(write(tmp_path, "t", "".join(f"{m}\n" for m in (1, 1, 3, 7, 7, 7, 20))))
    svc = svc_mod.TraceService(t, 0.0)
    free, n = 0.0, 0
    for _ in range(10 * 7 * 50):  # bounded: a bug that stops the clock must fail, not hang
        _, free = svc.send(free, 1514)
        if free > 1.0:
            break
        n += 1
    assert n == t.count(-1, 1.0) == 7 * 50
    assert math.isclose(n * 12000 / 1.0, t.mean_rate_bps, rel_tol=1e-9)

"""CoDel against RFC 8289: one on_dequeue() call per packet, a packet every millisecond."""

import math

import pytest

from policies.base import Action, ParamError, QueueState
from policies.codel import Codel, CodelParams

T0 = 1.0  # start away from 0: RFC 8289 uses first_above_time == 0 as "unset"


def run(pol: Codel, sojourn_at, start: float, stop: float, backlog: int = 100_000) -> list[tuple]:
    """Dequeue one packet per ms in [start, stop); return (time, action) of every non-enqueue."""
    out = []
    for i in range(round((stop - start) * 1000)):
        now = start + i / 1000
        action = pol.on_dequeue("classic", sojourn_at(now), now, backlog)
        if action is not Action.ENQUEUE:
            out.append((now, action))
    return out


def test_no_drop_while_sojourn_stays_below_target():
    assert run(Codel(), lambda t: 0.0049, T0, T0 + 2) == []


def test_first_drop_after_one_interval_above_target():
    drops = run(Codel(), lambda t: 0.010, T0, T0 + 0.3)
    assert drops[0] == (pytest.approx(T0 + 0.100), Action.DROP)


def test_drop_interval_shrinks_with_one_over_sqrt_count():
    pol = Codel()
    times = [t for t, _ in run(pol, lambda t: 0.010, T0, T0 + 1.5)]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) >= 15
    for n, gap in enumerate(gaps, start=1):  # drop n+1 comes interval/sqrt(n) after drop n
        assert gap == pytest.approx(0.100 / math.sqrt(n), abs=0.0011)  # 1 ms packet grid
    assert pol.count == len(times)


def test_leaves_dropping_state_when_delay_falls_and_reuses_count_on_quick_return():
    pol = Codel()
    first = run(pol, lambda t: 0.010, T0, T0 + 1.0)
    count = pol.count
    assert len(first) == count > 5
    assert run(pol, lambda t: 0.001, T0 + 1.0, T0 + 1.05) == [] and not pol.dropping
    again = [t for t, _ in run(pol, lambda t: 0.010, T0 + 1.05, T0 + 1.4)]
    # back above target for an interval, then drops restart at the old rate, not from 1
    assert again[0] == pytest.approx(T0 + 1.15, abs=0.0011)
    assert pol.lastcount == count - 1  # delta = count - lastcount of the first episode (1)
    assert again[1] - again[0] == pytest.approx(0.100 / math.sqrt(count - 1), abs=0.0011)


def test_count_restarts_from_one_after_a_long_pause():
    pol = Codel()
    run(pol, lambda t: 0.010, T0, T0 + 1.0)
    run(pol, lambda t: 0.001, T0 + 1.0, T0 + 3.0)  # 2 s > 16 intervals
    again = [t for t, _ in run(pol, lambda t: 0.010, T0 + 3.0, T0 + 3.5)]
    assert again[1] - again[0] == pytest.approx(0.100, abs=0.0011)


def test_ecn_marks_with_the_same_control_law():
    pol = Codel(CodelParams(ecn=True))
    events = run(pol, lambda t: 0.010, T0, T0 + 1.0)
    assert {a for _, a in events} == {Action.MARK}
    gaps = [b[0] - a[0] for a, b in zip(events, events[1:], strict=False)]
    for n, gap in enumerate(gaps, start=1):
        assert gap == pytest.approx(0.100 / math.sqrt(n), abs=0.0011)


def test_small_backlog_and_empty_queue_stop_dropping():
    assert run(Codel(), lambda t: 0.010, T0, T0 + 1, backlog=1514) == []  # <= maxpacket
    pol = Codel()
    run(pol, lambda t: 0.010, T0, T0 + 0.3)
    assert pol.dropping
    pol.on_dequeue("classic", 0.010, T0 + 0.3, 0)  # the queue is empty after this packet
    assert not pol.dropping and pol.first_above_time == 0


def test_update_leaves_everything_to_the_per_packet_hook():
    pol = Codel()
    d = pol.update(QueueState(t=0, dt=0.016, link_rate_bps=1e6))
    assert d.classic.p_enqueue == d.l4s.p_enqueue == 1.0
    assert Codel.per_packet and set(Codel.datapaths) == {"nfqueue", "kernel", "dummynet"}


def test_bad_values_name_the_key():
    with pytest.raises(ParamError, match="interval_ms"):
        CodelParams.from_args({"interval_ms": "0"})
    with pytest.raises(ParamError, match="ecn"):
        CodelParams.from_args({"ecn": "maybe"})


def test_a_packet_dequeued_exactly_at_drop_next_is_dropped():
    """RFC 8289 dequeue(): `while (now >= drop_next && dropping)` drop: at drop_next, not after."""
    pol = Codel()
    run(pol, lambda t: 0.010, T0, T0 + 0.2)  # above target: dropping, count 1 or more
    assert pol.dropping
    due = pol.drop_next
    assert pol.on_dequeue("classic", 0.010, due - 1e-6, 100_000) is Action.ENQUEUE
    count = pol.count
    assert pol.on_dequeue("classic", 0.010, due, 100_000) is Action.DROP and pol.count == count + 1


def test_a_drop_state_re_entered_soon_reuses_a_count_delta_of_two():
    """RFC 8289: `if (delta > 1 && now - drop_next < 16 * interval) count = delta`: a delta
    of exactly 2 is reused, a delta of 1 restarts from 1."""
    for delta, expect in ((2, 2), (1, 1)):
        pol = Codel()
        pol.count, pol.lastcount, pol.drop_next = 5 + delta, 5, T0  # the last episode's state
        assert pol._enter_dropping(T0 + 0.02) is Action.DROP  # 20 ms later: "soon"
        assert pol.count == expect


def test_the_queue_shape_carries_the_limit():
    assert Codel(CodelParams(limit=123)).queue_config().limit_pkts == 123

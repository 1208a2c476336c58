"""The delay line's schedule: base delays change at their times, each direction stays FIFO."""

from __future__ import annotations

import pytest

from orchestrator.bottleneck.delayline import DelayLine


class P:
    def __init__(self, name: str) -> None:
        self.name, self.done = name, False

    def get_payload(self) -> bytes:
        return b"\x45" + b"\0" * 19

    def accept(self) -> None:
        self.done = True


def test_changes_apply_at_their_time() -> None:
    line = DelayLine({0: 0.0, 1: 0.6}, {})
    line.schedule([[0, 0.0, 0.6], [15, 0.0, 0.04]], t0=100.0)
    assert line.apply_due(99.0) == 100.0
    assert line.apply_due(100.0) == 115.0 and line.base_s == {0: 0.0, 1: 0.6}
    assert line.apply_due(114.999) == 115.0 and line.base_s[1] == 0.6
    assert line.apply_due(115.01) is None and line.base_s[1] == pytest.approx(0.04)
    assert [(d, a) for d, a, _ in line.applied] == [(100.0, 100.0), (115.0, 115.01)]


def test_a_drop_in_delay_keeps_fifo_order() -> None:
    line = DelayLine({0: 0.0, 1: 0.6}, {})
    line.schedule([[0, 0.0, 0.6], [1, 0.0, 0.04]], t0=0.0)
    line.apply_due(0.0)
    a = P("a")
    line.hold(1, a, now=0.9)  # due 1.5
    line.apply_due(1.0)
    b = P("b")
    line.hold(1, b, now=1.0)  # 1.04 on its own, but not before a
    assert [e[0] for e in sorted(line.held)] == pytest.approx([1.5, 1.5])
    assert [e[2].name for e in sorted(line.held)] == ["a", "b"]
    c = P("c")
    line.hold(1, c, now=2.0)
    assert sorted(line.held)[-1][0] == pytest.approx(2.04)


def test_without_a_schedule_delays_are_independent() -> None:
    line = DelayLine({0: 0.01, 1: 0.02}, {})
    line.hold(1, P("x"), now=5.0)
    assert line.held[0][0] == pytest.approx(5.02) and line.last_due == {}

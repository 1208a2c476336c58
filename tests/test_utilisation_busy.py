"""Utilisation under overload (issue 10, finding 7): a link busy at 99.8% in every second read
0.896 because the window ran from the first arrival (a handshake before the flows ramped up)
to the last departure (a straggler after they ended). It is now the mean over the busy whole
seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import queue

RATE = 10e6  # bit/s
SIZE = 1250  # bytes: 1000 packets a second fill the link


def _packets(departures: np.ndarray) -> pd.DataFrame:
    n = departures.size
    return pd.DataFrame({
        "t_arrival": departures - 0.001, "t_departure": departures,
        "cls": np.ones(n, np.uint8), "ecn_in": np.zeros(n, np.uint8),
        "action": np.zeros(n, np.uint8), "size": np.full(n, SIZE, np.uint16),
        "sojourn_ms": np.ones(n, np.float32), "src": np.uint32(1), "dst": np.uint32(2),
        "sport": np.uint16(3), "dport": np.uint16(4), "proto": np.uint8(6)})


def test_overload_reads_as_the_seconds_do():
    t0 = 1000.0
    busy = t0 + 1.0 + np.arange(8 * 998) / 998  # 8 s at 99.8% of the link
    handshake = np.array([t0 + 0.0005])  # one SYN a second before the flows ramp up
    straggler = np.array([t0 + 9.9])  # one late packet after they end
    pkts = _packets(np.concatenate([handshake, busy, straggler]))
    per_second = 998 * SIZE * 8 / RATE
    assert queue.utilisation(pkts, RATE) == pytest.approx(per_second, abs=0.002)
    # an explicit span still means bytes over that span, as before
    span = (t0, t0 + 10)
    assert queue.utilisation(pkts, RATE, span=span) == pytest.approx(
        (8 * 998 + 2) * SIZE * 8 / (RATE * 10), rel=1e-9)


def test_a_half_loaded_link_stays_half():
    t0 = 50.0
    pkts = _packets(t0 + np.arange(6 * 500) / 500)  # 6 s at 50%
    assert queue.utilisation(pkts, RATE) == pytest.approx(0.5, abs=0.01)

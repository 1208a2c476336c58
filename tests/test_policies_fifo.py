"""FIFO tail drop."""

import numpy as np
import pytest

from policies.base import ClassState, ParamError, QueueState
from policies.fifo import Fifo, FifoParams


def test_never_drops_or_marks_by_decision():
    rng = np.random.default_rng(1)
    pol = Fifo()
    for _ in range(500):
        c = ClassState(sojourn_ms=rng.uniform(0, 500), head_sojourn_ms=rng.uniform(0, 500),
                       backlog_pkts=int(rng.integers(0, 5000)), drops=int(rng.integers(0, 50)))
        d = pol.update(QueueState(t=0.0, dt=0.016, link_rate_bps=1e7, classic=c, l4s=c))
        assert d.classic.p_enqueue == d.l4s.p_enqueue == 1.0
        assert d.l4s.step_threshold_ms is None


def test_limit_goes_to_the_queue_config():
    assert Fifo().queue_config().limit_pkts is None  # the testbed's buffer
    assert Fifo(FifoParams.from_args({"limit": "250"})).queue_config().limit_pkts == 250


@pytest.mark.parametrize("bad", ["0", "-5", "ten", "1.5"])
def test_bad_limit_names_the_key(bad):
    with pytest.raises(ParamError, match="'limit'"):
        FifoParams.from_args({"limit": bad})

"""The constant calibration policy: the probabilities it is given, every update, any state."""

import numpy as np
import pytest

import policies
from policies.base import ClassState, ParamError, QueueState
from policies.constant import Constant, ConstantParams


def _state(rng):
    c = ClassState(sojourn_ms=rng.uniform(0, 500), head_sojourn_ms=rng.uniform(0, 500),
                   backlog_pkts=int(rng.integers(0, 5000)), drops=int(rng.integers(0, 50)))
    return QueueState(t=0.0, dt=0.016, link_rate_bps=1e7, classic=c, l4s=c)


def test_the_same_decision_whatever_the_queue():
    pol = policies.make("constant", {"l4s_p_mark": "0.2", "classic_p_drop": "0.05",
                                     "classic_p_mark": "0.1"})
    rng = np.random.default_rng(3)
    for _ in range(200):
        d = pol.update(_state(rng))
        assert (d.l4s.p_mark, d.l4s.p_drop) == (0.2, 0.0)
        assert (d.classic.p_mark, d.classic.p_drop) == (0.1, 0.05)
        assert d.l4s.step_threshold_ms is None  # no step: only the coin marks


def test_queue_config_tosses_on_every_packet_by_default():
    qc = Constant().queue_config()
    assert qc.dualq and qc.min_backlog_bytes == 0
    qc = Constant(ConstantParams.from_args({"min_backlog_bytes": "3028"})).queue_config()
    assert qc.dualq and qc.min_backlog_bytes == 3028


def test_registered_and_runs_where_a_probability_is_applied():
    assert policies.resolve("constant") is Constant
    assert set(Constant.datapaths) == {"nfqueue", "ebpf"}
    copy = policies.from_config(policies.to_config(Constant(ConstantParams(l4s_p_mark=0.3))))
    assert copy.params.l4s_p_mark == 0.3  # the datapath's agent rebuilds it from its config


@pytest.mark.parametrize("args,key", [({"l4s_p_mark": "1.5"}, "l4s_p_mark"),
                                      ({"classic_p_drop": "-0.1"}, "classic_p_drop"),
                                      ({"classic_p_mark": "0.7", "classic_p_drop": "0.5"}, "classic_p_mark"),
                                      ({"min_backlog_bytes": "-1"}, "min_backlog_bytes")])
def test_bad_probabilities_name_the_key(args, key):
    with pytest.raises(ParamError, match=f"'{key}'"):
        ConstantParams.from_args(args)

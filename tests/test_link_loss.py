"""Random loss: Bernoulli and Gilbert-Elliott, seeded, with the stationary loss rate checked
against the closed form and the burst length against the chain's mean sojourn."""

from __future__ import annotations

import pytest

from orchestrator.spec import loss
from orchestrator.spec.schedule import ScheduleError


def test_parse_percentage() -> None:
    assert loss.parse("1%") == loss.LossModel(0.0, 1.0, 0.01, 0.01)
    assert loss.parse(0.02).mean_loss == pytest.approx(0.02)
    assert loss.parse(None) is None


def test_parse_gilbert_elliott() -> None:
    m = loss.parse({"model": "gilbert-elliott", "p": "1%", "r": "20%", "loss_bad": "50%"})
    assert m == loss.LossModel(p=0.01, r=0.2, loss_good=0.0, loss_bad=0.5)
    # pi_B = 0.01 / 0.21; mean = pi_B * 0.5
    assert m.mean_loss == pytest.approx(0.01 / 0.21 * 0.5)


@pytest.mark.parametrize("value, key, words", [
    ("150%", "", "between 0% and 100%"), ("lots", "", "like '1%'"), (True, "", "expected"),
    ({"model": "markov", "p": 0.1, "r": 0.1}, ".model", "gilbert-elliott"),
    ({"model": "gilbert-elliott", "p": 0.1}, ".r", "missing"),
    ({"model": "gilbert-elliott", "p": 0.1, "r": 0}, ".r", "above 0"),
    ({"model": "gilbert-elliott", "p": 0.1, "r": 0.2, "h": 1}, ".h", "unknown key"),
    ([1], "", "expected a percentage"),
])
def test_bad_loss(value: object, key: str, words: str) -> None:
    with pytest.raises(ScheduleError) as e:
        loss.parse(value)
    assert e.value.key == key and words in e.value.message


def test_bernoulli_rate_and_seed() -> None:
    a = loss.Loss(loss.LossModel.bernoulli(0.05), seed=3)
    seq = [a.lose() for _ in range(40000)]
    assert a.lost / a.seen == pytest.approx(0.05, abs=0.004)  # 4 sigma is 0.0044
    b = loss.Loss(loss.LossModel.bernoulli(0.05), seed=3)
    assert [b.lose() for _ in range(40000)] == seq
    c = loss.Loss(loss.LossModel.bernoulli(0.05), seed=4)
    assert [c.lose() for _ in range(40000)] != seq


def test_gilbert_elliott_stationary_rate_and_bursts() -> None:
    m = loss.LossModel(p=0.02, r=0.25, loss_good=0.0, loss_bad=1.0)
    g = loss.Loss(m, seed=11)
    lost = [g.lose() for _ in range(200000)]
    # every Bad packet is lost: the loss rate is pi_B = 0.02 / 0.27 = 0.0741
    assert sum(lost) / len(lost) == pytest.approx(0.02 / 0.27, rel=0.05)
    # and losses come in runs of mean length 1 / r = 4 packets (independent loss: ~1.08)
    runs, n = [], 0
    for x in lost:
        if x:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    assert sum(runs) / len(runs) == pytest.approx(4.0, rel=0.08)

"""Issue 14, item 5: `dt` is no model feature. New models get the current feature set (its
slot is the constant `zero`); checkpoints trained with `dt_ms` (the shipped models) keep it,
known by the names their stats.json records (or by having none)."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pandas as pd
import pytest
from test_aqm_llm_student import _random_state

import policies
from policies.aqm_llm import dataset as D
from policies.aqm_llm import features as F
from policies.aqm_llm.student import Student, StudentPolicy
from policies.base import ClassState, QueueState

from conftest import ROOT

# the first shipped model and its student (softmax head, trained with dt_ms): the legacy set
SHIPPED_STATS = ROOT / "models/aqm-llm/stats.json"
V1_LLM, V1_STUDENT = str(ROOT / "models/aqm-llm"), str(ROOT / "models/aqm-llm-student")


def two_ticks(rng: random.Random):  # noqa: ANN201
    """Two states that differ only in dt: PIE's 15 ms and PI2's 30 ms tick."""
    s = _random_state(rng)
    return dataclasses.replace(s, dt=0.015), dataclasses.replace(s, dt=0.030)


def test_the_current_set_has_no_dt_and_the_legacy_one_does() -> None:
    assert "dt_ms" not in F.SCALAR_NAMES and "dt_ms" in F.LEGACY_SCALAR_NAMES
    # one layout: the first model's statistics, saved before the feature sets existed, have as
    # many scalars as the current set, so the encoder, student and C code keep their shapes
    assert len(json.loads(SHIPPED_STATS.read_text())["scalar_mean"]) == F.N_SCALARS
    assert [n for n in F.SCALAR_NAMES if n not in F.LEGACY_SCALAR_NAMES] == ["zero"]


def test_states_differing_only_in_dt_give_identical_features() -> None:
    rng = random.Random(3)
    for _ in range(20):
        a, b = two_ticks(rng)
        np.testing.assert_array_equal(F.state_vector(a), F.state_vector(b))
        np.testing.assert_array_equal(F.from_rows(pd.DataFrame([a.flat()])).scalars,
                                      F.from_rows(pd.DataFrame([b.flat()])).scalars)
        legacy = [F.state_vector(s, F.LEGACY_SCALAR_NAMES) for s in (a, b)]
        assert legacy[0][1] == pytest.approx(15.0) and legacy[1][1] == pytest.approx(30.0)


def test_a_stats_file_without_names_is_legacy_and_new_stats_are_current() -> None:
    shipped = json.loads(SHIPPED_STATS.read_text())
    assert tuple(shipped["names"]) == F.LEGACY_SCALAR_NAMES
    del shipped["names"]
    assert F.NormStats.from_json(json.dumps(shipped)).names == F.LEGACY_SCALAR_NAMES
    f = F.concat([F.from_state(_random_state(random.Random(i))) for i in range(8)])
    fitted = F.NormStats.fit(f, np.arange(8.0))
    assert fitted.names == F.SCALAR_NAMES
    assert F.NormStats.fit(f, np.arange(8.0), names=F.LEGACY_SCALAR_NAMES).names == F.LEGACY_SCALAR_NAMES
    assert F.NormStats.from_json(fitted.to_json()).names == F.SCALAR_NAMES
    assert fitted.scalar_mean[1] == 0.0 and fitted.scalar_std[1] == 1.0  # the zero slot


def test_training_fits_the_current_set() -> None:
    pool = D.synthetic_pool(behaviours=("pie",), seconds=1.0)
    _, _, stats = D.prepare(pool, gamma=0.98)
    assert stats.names == F.SCALAR_NAMES


def _student(names: tuple[str, ...]) -> Student:
    """The shipped student's weights, with its statistics labelled as feature set `names`."""
    shipped = StudentPolicy(StudentPolicy.Params(checkpoint=V1_STUDENT, native=False)).student
    weights = {f"{k}{i}": a for i, (w, b) in enumerate(shipped.layers) for k, a in (("w", w), ("b", b))}
    return Student(weights, dataclasses.replace(shipped.stats, names=names))


@pytest.mark.parametrize("native", [True, False])
def test_a_current_student_ignores_dt_and_the_shipped_one_still_sees_it(native: bool) -> None:
    rng = random.Random(11)
    for names, same in ((F.SCALAR_NAMES, True), (F.LEGACY_SCALAR_NAMES, False)):
        pol = StudentPolicy(StudentPolicy.Params(native=native), student=_student(names))
        assert (pol.native is not None) == native
        for _ in range(20):
            a, b = two_ticks(rng)
            probs = []
            for s in (a, b):
                probs.append(pol.probabilities(s))
            assert np.allclose(probs[0], probs[1], rtol=0, atol=0) == same, names[1]


def test_the_first_student_is_legacy_and_unchanged() -> None:
    """The first model's student keeps dt: its decisions are those of the legacy feature vector."""
    pol = StudentPolicy(StudentPolicy.Params(checkpoint=V1_STUDENT, native=False))
    assert pol.student.stats.names == F.LEGACY_SCALAR_NAMES
    s = _random_state(random.Random(5))
    raw = F.state_vector(s, F.LEGACY_SCALAR_NAMES)
    x = pol.student._mean, pol.student._std
    want = np.clip((raw - x[0]) / x[1], -F.CLIP, F.CLIP)
    mask = raw[pol.student._series.stop:]
    want[pol.student._series] *= mask
    np.testing.assert_allclose(pol.student.state_input(s), want.astype(np.float32))


# ---------------------------------------------------------------- the first models, unchanged
# Their probabilities on three states that differ in dt, computed on main before the feature
# sets existed (the same code computes them here, so the legacy set reproduces them exactly).
GOLDEN_LLM = [
    [[0.893716673251, 0.0017091164071, 0.104574210342],
     [0.978967725916, 0.00109791204976, 0.0199343620342]],
    [[0.949390087753, 0.000387408902151, 0.0502225033446],
     [0.991595936264, 0.000242300476767, 0.00816176325933]],
    [[0.962074746008, 0.00028272846992, 0.0376425255222],
     [0.993213137474, 0.000193778455589, 0.0065930840709]],
]
GOLDEN_STUDENT = [
    [[0.947694006877, 0.001681379868, 0.0506246132554],
     [0.988345998148, 0.000890110636426, 0.0107638912153]],
    [[0.947399033397, 0.0016772340775, 0.0509237325255],
     [0.988359062817, 0.000875873246139, 0.0107650639373]],
    [[0.944555429, 0.00213107090318, 0.0533135000973],
     [0.986046561313, 0.00133807910973, 0.0126153595771]],
]


def golden_states() -> list[QueueState]:
    out = []
    for i, dt in enumerate((0.016, 0.015, 0.030)):
        c = ClassState(sojourn_ms=2.0 + i, sojourn_max_ms=5.0 + i, head_sojourn_ms=3.0, backlog_bytes=30000,
                       backlog_pkts=20, arrival_bps=30e6, departure_bps=25e6, arrivals=40, drops=1, marks=5)
        l4s = ClassState(sojourn_ms=0.5, sojourn_max_ms=1.0, head_sojourn_ms=0.7, backlog_bytes=3000,
                         backlog_pkts=2, arrival_bps=15e6, departure_bps=14e6, arrivals=20, marks=3)
        hist = tuple(1.0 + 0.5 * k for k in range(16))
        out.append(QueueState(t=1.0, dt=dt, link_rate_bps=50e6, l4s=l4s, classic=c,
                              sojourn_history={"l4s": hist, "classic": hist},
                              rate_history={"l4s": (15e6,) * 16, "classic": (30e6,) * 16}))
    return out


def test_the_first_models_decide_as_before_dt_was_dropped() -> None:
    llm = policies.make("aqm-llm", {"worker": "false", "checkpoint": V1_LLM})
    stu = policies.make("aqm-llm-student", {"native": "false", "checkpoint": V1_STUDENT})
    states = golden_states()
    np.testing.assert_allclose([llm.probabilities(s).tolist() for s in states], GOLDEN_LLM, rtol=1e-6)
    np.testing.assert_allclose([stu.student.probs(stu.student.state_input(s)).tolist() for s in states],
                               GOLDEN_STUDENT, rtol=1e-6)


def test_distilling_the_first_teacher_feeds_the_student_its_legacy_features() -> None:
    from policies.aqm_llm.distill import teacher_labels
    from policies.aqm_llm.student import student_inputs

    teacher = policies.make("aqm-llm", {"worker": "false", "checkpoint": V1_LLM})
    pool = D.synthetic_pool(behaviours=("pie",), seconds=0.5)
    rows = pool[pool.episode == pool.episode.iloc[0]].head(4)
    labels = teacher_labels(teacher, rows)
    legacy = student_inputs(teacher.stats.apply(F.from_rows(rows, F.LEGACY_SCALAR_NAMES)))
    np.testing.assert_array_equal(labels["x"], legacy)
    assert np.all(np.abs(labels["x"][:, 1]) > 0)  # dt_ms is there, not the zero slot

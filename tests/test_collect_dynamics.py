"""The collect matrix's dynamic links: each point's schedule follows its own rate and RTT,
traces resolve next to the matrix file, and a matrix without dynamics plans as before."""

from __future__ import annotations

import pytest

from orchestrator.errors import SpecError
from orchestrator.experiment import collect
from orchestrator.spec import dynamic

from conftest import ROOT

MATRIX = """duration: 15s
rate: [10mbit, 50mbit]
rtt: [20ms]
buffer: [1.5bdp]
mixes: [{name: 1l-1c, l4s: 1, classic: 1}]
sample: 0
held_out: 1
"""


def test_shipped_matrix_has_dynamic_links() -> None:
    m = collect.load_matrix(ROOT / "scenarios/collect.yaml")
    assert {d.name for d in m.dynamics} >= {"static", "step", "leo", "cell1"}
    points = collect.plan(m)
    dyn = [p for p in points if p["link_dynamics"]]
    assert dyn and len(dyn) < len(points)
    assert collect.plan(m) == points  # seeded


def test_factors_follow_the_point(tmp_path) -> None:
    (tmp_path / "c.trace").write_text("1\n2\n")
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX + "dynamics:\n  - {name: static}\n"
                    "  - {name: step, rate_factors: [[0s, 1.0], [5s, 0.2]],\n"
                    "     rtt_factors: [[0s, 1.0], [5s, 2.0]]}\n"
                    "  - {name: cell, trace: c.trace, loss: 1%}\n")
    points = {p["name"]: p for p in collect.plan(collect.load_matrix(path))}
    assert points["50mbit-20ms-1.5bdp-1l-1c"]["link_dynamics"] is None
    step = dynamic.LinkDynamics.from_json(points["50mbit-20ms-1.5bdp-1l-1c-step"]["link_dynamics"])
    assert step.rate.value_at(6) == 10e6 and step.rtt.value_at(6) == pytest.approx(0.04)
    step10 = dynamic.LinkDynamics.from_json(points["10mbit-20ms-1.5bdp-1l-1c-step"]["link_dynamics"])
    assert step10.rate.value_at(6) == 2e6
    # a trace sets the rate: the point is named and shaped after its mean (1 per ms = 12 Mbit/s)
    cell = [p for p in points.values() if p["name"].endswith("-cell")]
    assert {p["rate"] for p in cell} == {"12mbit"}
    d = dynamic.LinkDynamics.from_json(cell[0]["link_dynamics"])
    assert d.trace_file == str((tmp_path / "c.trace").resolve()) and d.loss.mean_loss == 0.01
    assert collect._no_override(points["50mbit-20ms-1.5bdp-1l-1c"]) == {}


def test_without_dynamics_the_plan_is_unchanged(tmp_path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    names = [p["name"] for p in collect.plan(collect.load_matrix(path))]
    assert sorted(names) == ["10mbit-20ms-1.5bdp-1l-1c", "50mbit-20ms-1.5bdp-1l-1c"]


def test_bad_dynamic_in_the_matrix(tmp_path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX + "dynamics:\n  - {name: bad, rate_factors: [[0s, 1.0], [0s, 0.5]]}\n")
    with pytest.raises(SpecError, match=r"dynamics\[0\]\.rate\[1\]\.at: times must increase"):
        collect.load_matrix(path)
    path.write_text(MATRIX + "dynamics:\n  - {name: t, trace: missing.trace}\n")
    with pytest.raises(SpecError, match="trace file not found"):
        collect.load_matrix(path)


def test_held_out_points_cover_every_kind_of_link(tmp_path) -> None:
    """With static and changing links in the matrix, the held-out scenarios come from each kind
    in turn, so the evaluation always has both, whatever the seed."""
    path = tmp_path / "m.yaml"
    matrix = MATRIX.replace("held_out: 1", "held_out: 3").replace("rtt: [20ms]", "rtt: [10ms, 20ms, 50ms]")
    text = matrix + "dynamics:\n  - {name: static}\n  - {name: step, rate_factors: [[0s, 1.0], [5s, 0.5]]}\n"
    for seed in range(8):
        path.write_text(text + f"seed: {seed}\n")
        points = collect.plan(collect.load_matrix(path))
        held = [p for p in points if p["held_out"]]
        kinds = sorted("changing" if p["link_dynamics"] else "static" for p in held)
        assert len(held) == 3 and kinds.count("static") in (1, 2) and kinds.count("changing") in (1, 2), kinds


def test_the_shipped_recipe_still_holds_out_what_it_held_out() -> None:
    """The shipped model's held-out scenarios, as its collect.json recorded them when the pool was
    collected, are what its recipe plans today (one kind of link: the plain draw)."""
    import json

    recorded = json.loads((ROOT / "models/aqm-llm/collect.json").read_text())
    want = sorted(p["name"] for p in recorded["points"] if p["held_out"])
    points = collect.plan(collect.load_matrix(ROOT / "models/aqm-llm/collect.yaml"))
    assert sorted(p["name"] for p in points if p["held_out"]) == want

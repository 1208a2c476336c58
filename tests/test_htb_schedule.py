"""The HTB timer: the tc commands it builds, and real changes on a real HTB in a namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from orchestrator.bottleneck import htb_schedule as hs

from conftest import needs_root

EBPF_CLASSES = [{"parent": "1:", "classid": "1:1", "share": 1.0},
                {"parent": "1:1", "classid": "1:11", "share": 0.9, "prio": 0},
                {"parent": "1:1", "classid": "1:12", "share": 0.1, "prio": 1}]


def test_class_change_argv() -> None:
    assert hs.class_change_argv("r1-rx", EBPF_CLASSES[2], 10e6) == [
        "tc", "class", "change", "dev", "r1-rx", "parent", "1:1", "classid", "1:12", "htb",
        "rate", "1000000bit", "ceil", "10000000bit", "prio", "1"]
    assert hs.class_change_argv("eth0", EBPF_CLASSES[0], 50e6)[-4:] == ["rate", "50000000bit", "ceil",
                                                                      "50000000bit"]
    assert hs.class_change_argv("eth0", EBPF_CLASSES[2], 5000)[11] == "1000bit"  # floor


@pytest.mark.parametrize("dev, cls", [("-x", EBPF_CLASSES[0]), ("a b", EBPF_CLASSES[0]),
                                      ("eth0", {"parent": "1:;", "classid": "1:1"}),
                                      ("eth0", {"parent": "1:", "classid": ""})])
def test_bad_names_never_reach_tc(dev: str, cls: dict) -> None:
    with pytest.raises(ValueError):
        hs.class_change_argv(dev, cls, 1e6)


def test_plan_times() -> None:
    p = hs.plan({"dev": "eth0", "changes": [[0, 5e6], [2.5, 1e6]], "classes": EBPF_CLASSES[:1]}, 100.0)
    assert [(due, rate) for due, rate, _ in p] == [(100.0, 5e6), (102.5, 1e6)]
    assert p[1][2][0][11] == "1000000bit"


@pytest.fixture
def htb_ns():
    """A namespace with a veth device under HTB 1:1 (rate 50 Mbit/s); tests using it carry
    conftest.needs_root (CI runs as root, so they run there)."""
    ns = f"tbtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def run(*argv: str) -> None:
            subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True)
        run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        run("ip", "link", "set", "d0", "up")
        run("tc", "qdisc", "add", "dev", "d0", "root", "handle", "1:", "htb", "default", "1")
        run("tc", "class", "add", "dev", "d0", "parent", "1:", "classid", "1:1", "htb",
            "rate", "50mbit", "ceil", "50mbit")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@needs_root
def test_timer_changes_htb_on_time(htb_ns: str, tmp_path) -> None:
    out = tmp_path / "changes.jsonl"
    cfg = tmp_path / "cfg.json"
    t0 = time.time() + 0.5
    t0_path = tmp_path / "schedule-t0"  # the run writes it when the flows start
    cfg.write_text(json.dumps({"dev": "d0", "t0_path": str(t0_path), "changes": [[0, 20e6], [0.3, 7e6]],
                               "classes": EBPF_CLASSES[:1], "out": str(out)}))
    proc = subprocess.Popen(["ip", "netns", "exec", htb_ns, sys.executable, "-m",
                             "orchestrator.bottleneck.htb_schedule", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    try:
        time.sleep(0.2)
        assert hs.read(str(out)) == []  # nothing happens before t0 is known
        t0_path.write_text(json.dumps({"t0_epoch": t0}))
        deadline = time.time() + 10
        while len(hs.read(str(out))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        shown = subprocess.run(["ip", "netns", "exec", htb_ns, "tc", "class", "show", "dev", "d0"],
                               capture_output=True, text=True, check=True).stdout
    finally:
        proc.terminate()
        rc = proc.wait(5)
    rows = hs.read(str(out))
    assert rc == 0
    assert [r["rate_bps"] for r in rows] == [20e6, 7e6]
    assert [r["due"] for r in rows] == pytest.approx([t0, t0 + 0.3])
    assert all(r["ok"] and 0 <= r["late_ms"] < 200 for r in rows)
    assert " rate 7Mbit ceil 7Mbit " in shown  # what the kernel holds now


def test_read_skips_a_torn_line(tmp_path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"due": 1}\n{"due": ')
    assert hs.read(str(p)) == [{"due": 1}]
    assert hs.read(str(tmp_path / "missing")) == []


def test_several_classes_go_in_one_batch(tmp_path) -> None:
    cmds = [hs.class_change_argv("d0", c, 10e6) for c in EBPF_CLASSES]
    path = str(tmp_path / "b")
    assert hs.batched(cmds, path) == [["tc", "-batch", path]]
    assert (tmp_path / "b").read_text().splitlines()[2] == \
        "class change dev d0 parent 1:1 classid 1:12 htb rate 1000000bit ceil 10000000bit prio 1"
    assert hs.batched(cmds[:1], path) == cmds[:1]


@needs_root
def test_ebpf_layout_changes_all_three_classes(htb_ns: str, tmp_path) -> None:
    def tc(*argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", htb_ns, "tc", *argv], check=True, capture_output=True)
    for c in EBPF_CLASSES[1:]:
        tc("class", "add", "dev", "d0", "parent", "1:1", "classid", c["classid"], "htb", "rate", "1mbit",
           "ceil", "50mbit", "prio", str(c["prio"]))
    out, cfg = tmp_path / "c.jsonl", tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"dev": "d0", "t0_epoch": time.time() + 0.3, "changes": [[0, 20e6]],
                               "classes": EBPF_CLASSES, "out": str(out)}))
    proc = subprocess.Popen(["ip", "netns", "exec", htb_ns, sys.executable, "-m",
                             "orchestrator.bottleneck.htb_schedule", str(cfg)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while not hs.read(str(out)) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(5)
    shown = subprocess.run(["ip", "netns", "exec", htb_ns, "tc", "class", "show", "dev", "d0"],
                           capture_output=True, text=True).stdout
    assert "class htb 1:11 parent 1:1 prio 0 rate 18Mbit ceil 20Mbit" in shown
    assert "class htb 1:12 parent 1:1 prio 1 rate 2Mbit ceil 20Mbit" in shown
    assert hs.read(str(out))[0]["ok"]

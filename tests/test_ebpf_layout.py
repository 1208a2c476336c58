"""The agent's numpy layouts match the BPF object's structs (read from its BTF)."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from orchestrator.bottleneck import bpfobj
from orchestrator.bottleneck.ebpf import EbpfDatapath
from orchestrator.bottleneck.ebpf_agent import (
    CLS_CFG_DT,
    CONFIG_DT,
    COUNTS_DT,
    REC_DT,
    STATE_DT,
    prob32,
)
from policies.codel import Codel
from policies.dualpi2 import DualPi2


def btf_structs(obj) -> dict[str, tuple[int, dict[str, int]]]:
    """struct name -> (size, {member: byte offset}) from `bpftool btf dump file OBJ`."""
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(obj)], capture_output=True,
                         text=True, check=True).stdout
    structs: dict[str, tuple[int, dict[str, int]]] = {}
    current = None
    for line in out.splitlines():
        head = re.match(r"\[\d+\] STRUCT '([^']+)' size=(\d+)", line)
        if head:
            current = head.group(1)
            structs[current] = (int(head.group(2)), {})
        elif line.startswith("\t'") and current:
            name, bits = re.match(r"\t'([^']+)' type_id=\d+ bits_offset=(\d+)", line).groups()
            structs[current][1][name] = int(bits) // 8
        elif not line.startswith("\t"):
            current = None
    return structs


@pytest.mark.parametrize("struct, dtype", [("config", CONFIG_DT), ("cls_cfg", CLS_CFG_DT),
                                           ("cls_counts", COUNTS_DT), ("cls_state", STATE_DT),
                                           ("pkt_rec", REC_DT)])
def test_layout_matches_btf(struct: str, dtype: np.dtype) -> None:
    size, members = btf_structs(bpfobj.build("dualq.c"))[struct]
    assert dtype.itemsize == size
    ours = {name: off for name, (_, off) in dtype.fields.items() if not name.startswith("_")}
    assert {k: v for k, v in members.items() if not k.startswith("_")} == ours


def test_probabilities_saturate_in_u32() -> None:
    assert prob32(0.0) == 0 and prob32(1.0) == 2**32 - 1
    assert prob32(0.5) == 2**31


def test_per_packet_policies_are_refused() -> None:
    dp = EbpfDatapath(testbed=None)  # unsupported() looks at the policy only
    assert "nfqueue" in dp.unsupported(Codel())
    assert dp.unsupported(DualPi2()) is None


def test_rate_follower_keeps_step_marking_on_the_link_rate(tmp_path):
    """Under a schedule the kernel's backlog-to-sojourn factor follows the rate in force."""
    import json

    import numpy as np

    from orchestrator.bottleneck.ebpf_agent import RateFollower

    class FakeMaps:
        config = np.zeros(1, dtype=[("ps_per_byte", "u8")])

    t0 = tmp_path / "schedule-t0"
    follow = RateFollower({"steps": [[0, 50e6], [10, 10e6]], "t0_path": str(t0)})
    maps = FakeMaps()
    follow.update(maps, now=5.0)
    assert maps.config["ps_per_byte"][0] == 0  # nothing before the run's t0
    t0.write_text(json.dumps({"t0_epoch": 100.0}))
    follow.update(maps, now=105.0)
    assert maps.config["ps_per_byte"][0] == 160_000  # 8e12 / 50e6
    follow.update(maps, now=110.0)
    assert maps.config["ps_per_byte"][0] == 800_000

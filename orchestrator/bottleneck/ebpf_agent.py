"""The user-space half of the 'ebpf' datapath; runs on the router (in its namespace).

    python -m orchestrator.bottleneck.ebpf_agent setup  CONFIG.json   load, configure, pin
    python -m orchestrator.bottleneck.ebpf_agent run    CONFIG.json   the control loop
    python -m orchestrator.bottleneck.ebpf_agent finish CONFIG.json   drain, print totals

`setup` loads bpf/dualq.c, writes its static configuration, attaches the two qdisc
tracepoint programs and pins maps, programs and links under the testbed's bpffs, then exits:
the kernel half lives on without any process. `run`, every tupdate, reads the per-class
queue state (mmapped) and event counters (per CPU, one lookup per class), runs the policy
through the ControlLoop, writes the decision into the mmapped config map and drains the
per-packet ring buffer to Parquet. If `run` dies, the
kernel keeps applying the last decision (fail static). `finish` drains what the ring buffer
still holds and prints the kernel's totals as JSON, for the datapath's stop().

The numpy layouts below mirror the C structs; tests/test_ebpf_layout.py checks them against
the object's BTF.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator import strictjson
from orchestrator.bottleneck import bpfobj
from orchestrator.bottleneck.control import ControlLoop
from orchestrator.bottleneck.packetlog import write_part
from orchestrator.bottleneck.ringbuf import RingReader
from orchestrator.bottleneck.signals import stop_event
from policies.base import ClassState, Decision, QueueState

CLS_CFG_DT = np.dtype([("p_drop", "<u4"), ("p_mark", "<u4"), ("step_ns", "<u8")])
CONFIG_DT = np.dtype([
    ("cls", CLS_CFG_DT, (2,)), ("ps_per_byte", "<u8"), ("classid", "<u4", (2,)),
    ("ifindex", "<u4"), ("netns_ino", "<u4"), ("limit_pkts", "<u4"), ("sample_every", "<u4"),
    ("single_queue", "<u4"), ("min_backlog", "<u4"), ("leaf_handle", "<u4", (2,)), ("seq", "<u8")])
COUNT_FIELDS = ("arrivals", "arr_bytes", "drops", "marks", "overflows", "step_marks", "deq_traced",
                "soj_sum_ns")
COUNTS_DT = np.dtype([(f, "<u8") for f in COUNT_FIELDS])
GLOBAL_FIELDS = ("records", "records_lost", "unstamped_deq", "leaf_lookups", "leaf_misses")
STATE_FIELDS = ("soj_max_ns", "last_deq_arr_ns", "busy_start_ns", "q_pkts", "q_bytes", "q_sent_pkts",
                "q_sent_bytes", "q_ns")
STATE_DT = np.dtype([(f, "<u8") for f in STATE_FIELDS])
REC_DT = np.dtype([("t_arr_ns", "<u8"), ("t_dep_ns", "<u8"), ("src", "<u4"), ("dst", "<u4"),
                   ("sport", "<u2"), ("dport", "<u2"), ("size", "<u2"), ("cls", "u1"),
                   ("ecn_in", "u1"), ("action", "u1"), ("proto", "u1"), ("_pad", "V6")])
RINGBUF_BYTES = 16 << 20  # dualq.c: dq_records max_entries
MAPS = ("dq_config", "dq_counts", "dq_state", "dq_records")
LINKS = {"on_enqueue": "link_enqueue", "on_dequeue": "link_dequeue"}
TC_PROG, TC_PROG_PIN = "dualq_egress", "prog_egress"
CLASSES = ("l4s", "classic")
MTU_L2 = 1514


class Maps:
    """The pinned maps: config and queue state mapped into this process, counters by lookup."""

    def __init__(self, pin_dir: Path) -> None:
        self.pin_dir = pin_dir
        self._cfg_mm = bpfobj.mmap_array(pin_dir / "dq_config", CONFIG_DT.itemsize, 1)
        self._state_mm = bpfobj.mmap_array(pin_dir / "dq_state", STATE_DT.itemsize, 2)
        self.config = np.frombuffer(self._cfg_mm, dtype=CONFIG_DT, count=1)
        self.state = np.frombuffer(self._state_mm, dtype=STATE_DT, count=2)
        self._counts = bpfobj.PercpuArray(pin_dir / "dq_counts", COUNTS_DT.itemsize)

    def counts(self) -> np.ndarray:
        """Per class (L, C) and global (index 2): the event counters summed over CPUs."""
        out = np.zeros(3, dtype=COUNTS_DT)
        for key in range(3):
            per_cpu = np.frombuffer(self._counts.lookup(key), dtype="<u8").reshape(
                self._counts.ncpus, -1)[:, :len(COUNT_FIELDS)].sum(axis=0)
            out[key] = tuple(per_cpu)
        return out

    def global_counts(self) -> dict[str, int]:
        raw = self.counts()[2:3].view("<u8")
        return {name: int(raw[i]) for i, name in enumerate(GLOBAL_FIELDS)}

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        return self.counts(), self.state.copy()

    def write_decision(self, decision: Decision) -> None:
        cls = self.config["cls"]
        for i, name in enumerate(CLASSES):
            d = decision.of(name)
            cls["p_drop"][0, i] = prob32(d.p_drop)
            cls["p_mark"][0, i] = prob32(d.p_mark)
            step = d.step_threshold_ms
            cls["step_ns"][0, i] = 0 if step is None else max(1, int(step * 1e6))
        self.config["seq"][0] += 1

    def close(self) -> None:
        del self.config, self.state
        self._cfg_mm.close()
        self._state_mm.close()
        self._counts.close()


def prob32(p: float) -> int:
    """A probability as the kernel's u32 threshold: a packet is hit when rand32 < this."""
    return min(int(round(p * 2**32)), 2**32 - 1)


# ---------------------------------------------------------------- setup


def setup(cfg: dict[str, Any]) -> None:
    pin = Path(cfg["pin_dir"])
    pin.mkdir(parents=True, exist_ok=True)
    obj = bpfobj.LoadedObject(Path(cfg["obj"]))
    try:
        for name in MAPS:
            obj.pin_map(name, pin / name)
        maps = Maps(pin)
        configure(maps, cfg)
        maps.close()
        for prog, link in LINKS.items():  # after configure: they match our device only
            obj.attach_and_pin(prog, pin / link)
        obj.pin_program(TC_PROG, pin / TC_PROG_PIN)
    finally:
        obj.close()


def configure(maps: Maps, cfg: dict[str, Any]) -> None:
    c = maps.config
    c["ps_per_byte"] = int(8e12 / cfg["link_rate_bps"])
    c["classid"][0] = cfg["classids"]
    c["leaf_handle"][0] = cfg["leaf_handles"]
    c["ifindex"] = socket.if_nametoindex(cfg["ifname"])
    c["netns_ino"] = os.stat("/proc/self/ns/net").st_ino
    c["limit_pkts"] = cfg["limit_pkts"]
    c["sample_every"] = cfg["sample_every"]
    c["single_queue"] = int(cfg["single_queue"])
    c["min_backlog"] = cfg.get("min_backlog_bytes", 2 * MTU_L2)
    maps.write_decision(Decision())


# ---------------------------------------------------------------- state


class StateReader:
    """Per-class QueueState from the kernel's cumulative counters (deltas per interval) and
    the leaf queues' state."""

    def __init__(self, maps: Maps, link_rate_bps: float) -> None:
        self.maps, self.rate = maps, link_rate_bps
        self.t0_ns = self.prev_ns = time.monotonic_ns()
        self.prev = maps.snapshot()

    def read(self, now: float) -> QueueState:
        snap, mono = self.maps.snapshot(), time.monotonic_ns()
        self.maps.state["soj_max_ns"] = 0  # the interval's max restarts now (racy by a packet)
        dt = max((mono - self.prev_ns) / 1e9, 1e-9)
        per = [self._class(i, snap, dt, mono) for i in range(2)]
        self.prev, self.prev_ns = snap, mono
        return QueueState(t=(mono - self.t0_ns) / 1e9, dt=dt, link_rate_bps=self.rate,
                          l4s=per[0], classic=per[1])

    def _class(self, i: int, snap: tuple[np.ndarray, np.ndarray], dt: float, mono: int) -> ClassState:
        c, p, s, ps = snap[0][i], self.prev[0][i], snap[1][i], self.prev[1][i]
        traced = int(c["deq_traced"] - p["deq_traced"])
        pkts, nbytes = int(s["q_pkts"]), int(s["q_bytes"])
        return ClassState(
            sojourn_ms=int(c["soj_sum_ns"] - p["soj_sum_ns"]) / traced / 1e6 if traced else 0.0,
            sojourn_max_ms=int(s["soj_max_ns"]) / 1e6,
            head_sojourn_ms=self._head_ms(s, pkts, nbytes, mono),
            backlog_bytes=nbytes, backlog_pkts=pkts,
            arrival_bps=int(c["arr_bytes"] - p["arr_bytes"]) * 8 / dt,
            departure_bps=int(s["q_sent_bytes"] - ps["q_sent_bytes"]) * 8 / dt,
            arrivals=int(c["arrivals"] - p["arrivals"]), drops=int(c["drops"] - p["drops"]),
            marks=int(c["marks"] - p["marks"]))

    def _head_ms(self, s: np.void, pkts: int, nbytes: int, mono: int) -> float:
        """Age of the packet at the head of the queue. It arrived after the last packet that
        left and within the current busy period, so its age is at most now minus the later
        of the two; with a draining queue the bound is tight to one inter-arrival time."""
        if pkts == 0:
            return 0.0
        since = max(int(s["last_deq_arr_ns"]), int(s["busy_start_ns"]))
        if since == 0:  # nothing seen yet: predict from the backlog at the link rate
            return nbytes * 8 / self.rate * 1e3
        return max(0, mono - since) / 1e6


class RateFollower:
    """A dynamic link on ebpf: the kernel program turns the L queue's backlog into a sojourn
    for step marking at the link's serialisation time per byte, so when the HTB timer
    changes the rate, that figure follows (from the scheduled instants, every tupdate). It is
    the datapath's own link rate, as HTB's; the policy's state keeps the nominal rate."""

    def __init__(self, capacity: dict[str, Any]) -> None:
        self.steps = [(float(t), float(r)) for t, r in capacity["steps"]]
        self.t0_path = capacity["t0_path"]
        self.t0: float | None = None
        self.rate: float | None = None

    def rate_at(self, t: float) -> float:
        rate = self.steps[0][1]
        for at, r in self.steps:
            if at <= t:
                rate = r
        return rate

    def update(self, maps: Any, now: float | None = None) -> None:
        if self.t0 is None:
            from orchestrator.spec.dynamic import read_t0

            self.t0 = read_t0(self.t0_path)
            if self.t0 is None:
                return
        rate = self.rate_at((time.time() if now is None else now) - self.t0)
        if rate != self.rate:
            maps.config["ps_per_byte"] = int(8e12 / rate)
            self.rate = rate


# ---------------------------------------------------------------- per-packet records


class RecordLog:
    """Drains the ring buffer and writes telemetry/packets parts from a writer thread."""

    def __init__(self, ring: RingReader, directory: Path, meta: dict[str, Any],
                 flush_s: float = 1.0) -> None:
        self.ring, self.dir, self.flush_s = ring, directory, flush_s
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "meta.json").write_text(strictjson.dumps(meta, indent=1))
        self.offset = time.time() - time.monotonic()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        self.part = len(list(directory.glob("part-*.parquet")))
        self.chunks: list[np.ndarray] = []
        self.rows = 0
        self.last_flush = time.monotonic()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def poll(self) -> None:
        recs = self.ring.drain()
        if len(recs):
            self.chunks.append(recs)
        if time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.chunks:
            return
        recs, self.chunks = np.concatenate(self.chunks), []
        self.rows += len(recs)
        path = self.dir / f"part-{self.part:05d}.parquet"
        self.part += 1
        self.threads = [t for t in self.threads if t.is_alive()]
        thread = threading.Thread(target=self._write, args=(path, recs), daemon=True)
        thread.start()  # pyarrow releases the GIL: the control loop keeps its deadlines
        self.threads.append(thread)

    def _write(self, path: Path, recs: np.ndarray) -> None:
        with self.lock:  # parts appear in order
            write_part(path, columns(recs, self.offset))

    def close(self) -> None:
        self.poll()
        self.flush()
        for t in self.threads:
            t.join()


def columns(recs: np.ndarray, offset: float) -> dict[str, np.ndarray]:
    """Ring buffer records -> the telemetry/packets columns (epoch seconds, NaN if dropped)."""
    t_arr = recs["t_arr_ns"].astype(np.float64) / 1e9 + offset
    dropped = recs["t_dep_ns"] == 0
    t_dep = np.where(dropped, np.nan, recs["t_dep_ns"].astype(np.float64) / 1e9 + offset)
    soj = (recs["t_dep_ns"].astype(np.int64) - recs["t_arr_ns"].astype(np.int64)) / 1e6
    return {
        "t_arrival": t_arr, "t_departure": t_dep,
        "cls": recs["cls"].copy(), "ecn_in": recs["ecn_in"].copy(), "action": recs["action"].copy(),
        "size": recs["size"].copy(),
        "sojourn_ms": np.where(dropped, np.nan, soj).astype(np.float32),
        "src": recs["src"].copy(), "dst": recs["dst"].copy(),
        "sport": recs["sport"].copy(), "dport": recs["dport"].copy(), "proto": recs["proto"].copy(),
    }


def open_ring(pin_dir: Path) -> RingReader:
    return RingReader(pin_dir / "dq_records", RINGBUF_BYTES, REC_DT)


def packet_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"sample_rate": 1.0 / cfg["sample_every"] if cfg["sample_every"] else 0.0,
            "datapath": "ebpf", "time_source": "bpf_ktime_get_ns + epoch offset",
            "sojourn": "clsact egress (before the root qdisc) to qdisc dequeue"}


# ---------------------------------------------------------------- run / finish


def run(cfg: dict[str, Any]) -> None:
    import policies

    pin, out = Path(cfg["pin_dir"]), Path(cfg["out_dir"])
    policy = policies.from_config(cfg)
    maps = Maps(pin)
    reader = StateReader(maps, cfg["link_rate_bps"])
    log = RecordLog(open_ring(pin), out / "packets", packet_meta(cfg))
    loop = ControlLoop(policy, cfg["tupdate_s"], out / "control", deadline_s=cfg.get("deadline_s"),
                       reward_fn=_reward_fn())
    stop = stop_event()

    follow = RateFollower(cfg["capacity"]) if cfg.get("capacity") else None

    def apply(decision: Decision) -> None:
        maps.write_decision(decision)
        if follow is not None:
            follow.update(maps)
        log.poll()

    print("ebpf agent ready", flush=True)
    try:
        loop.run(reader.read, apply, stop)
    finally:
        log.close()
        loop.close()
        stats = {**loop.stats(), "packets_logged": log.rows}
        Path(cfg["stats_file"]).write_text(strictjson.dumps(stats))
        maps.close()


def _reward_fn() -> Any:
    """The project's one reward (numpy only), for the experience pool's rows."""
    try:
        from policies.aqm_llm.reward import reward
    except ImportError:
        return None
    return reward


def finish(cfg: dict[str, Any]) -> dict[str, Any]:
    """Drain what is left in the ring (after the agent stopped or died); the kernel totals."""
    pin, out = Path(cfg["pin_dir"]), Path(cfg["out_dir"])
    log = RecordLog(open_ring(pin), out / "packets", packet_meta(cfg))
    log.close()
    maps = Maps(pin)
    counts, state = maps.snapshot()
    totals: dict[str, Any] = {"packets_logged_at_finish": log.rows, **maps.global_counts(),
                              "decision_seq": int(maps.config["seq"][0])}
    for i, name in enumerate(CLASSES):
        for f in ("arrivals", "drops", "marks", "overflows", "step_marks", "deq_traced"):
            totals[f"{name}_{f}"] = int(counts[i][f])
        totals[f"{name}_sent_pkts"] = int(state[i]["q_sent_pkts"])
        totals[f"{name}_backlog_pkts"] = int(state[i]["q_pkts"])
        traced = int(counts[i]["deq_traced"])
        totals[f"{name}_sojourn_mean_ms"] = (int(counts[i]["soj_sum_ns"]) / traced / 1e6
                                             if traced else math.nan)
    maps.close()
    return totals


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("setup", "run", "finish"):
        print(__doc__, file=sys.stderr)
        return 2
    cfg = json.loads(Path(argv[1]).read_text())
    if argv[0] == "setup":
        setup(cfg)
    elif argv[0] == "run":
        run(cfg)
    else:
        print(json.dumps(finish(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The per-packet log of a bottleneck: one row per packet, as Parquet parts.

Columns are the results layout's telemetry/packets schema. The hot path appends four things
per packet to flat buffers (two float arrays, one code byte, the first 24 bytes of the IPv4
packet); addresses, ports, protocol and size are parsed from those bytes in bulk with numpy
when a part is written, off the packet path, in a writer thread (pyarrow releases the GIL
while it writes). Parts are flushed at least every `flush_s`, so a killed process keeps all
but its last second.
"""

from __future__ import annotations

import os
import queue
import threading
from array import array
from pathlib import Path
from random import random
from typing import Any

import numpy as np

from orchestrator import strictjson

HEADER_BYTES = 24  # IPv4 header without options (20) + the ports of TCP/UDP (4)
ETH_HEADER = 14  # logged sizes are L2 bytes, as the link (and HTB) counts them

# the code byte packs cls (1 bit), action (2 bits) and the arrival ECN codepoint (2 bits)
_HDR = np.dtype([("vihl", "u1"), ("tos", "u1"), ("length", ">u2"), ("ident", ">u2"),
                 ("frag", ">u2"), ("ttl", "u1"), ("proto", "u1"), ("csum", ">u2"),
                 ("src", ">u4"), ("dst", ">u4"), ("sport", ">u2"), ("dport", ">u2")])


def code(cls: int, action: int, ecn: int) -> int:
    return cls | action << 1 | ecn << 3


def header24(data: bytes) -> bytes:
    """IPv4 fixed header + the 4 port bytes that follow its options (if any)."""
    ihl = (data[0] & 0x0F) * 4
    out = data[:20] + data[ihl:ihl + 4]
    return out.ljust(HEADER_BYTES, b"\0")


class PacketLog:
    def __init__(self, directory: str | Path, sample_rate: float = 1.0, epoch_offset: float = 0.0,
                 flush_s: float = 1.0, meta: dict[str, Any] | None = None) -> None:
        """`epoch_offset` is added to logged times (monotonic clock -> epoch seconds)."""
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "meta.json").write_text(strictjson.dumps(
            {"sample_rate": sample_rate, **(meta or {})}, indent=1))
        self.sample_rate = sample_rate
        self.offset = epoch_offset
        self.flush_s = flush_s
        self.part = len(list(self.dir.glob("part-*.parquet")))
        self.rows = 0
        self._new_buffers()
        self._todo: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="packetlog", daemon=True)
        self._writer.start()

    def _new_buffers(self) -> None:
        self.t_arr, self.t_dep = array("d"), array("d")
        self.codes, self.headers = bytearray(), bytearray()

    def add(self, t_arr: float, t_dep: float, code_byte: int, data: bytes) -> None:
        """One packet (t_dep NaN if it was dropped); skipped unless sampled."""
        if self.sample_rate < 1.0 and random() >= self.sample_rate:
            return
        self.t_arr.append(t_arr)
        self.t_dep.append(t_dep)
        self.codes.append(code_byte)
        if data[0] == 0x45 and len(data) >= HEADER_BYTES:
            self.headers += data[:HEADER_BYTES]
        else:
            self.headers += header24(data)

    def flush(self) -> None:
        """Hand the buffered rows to the writer thread (cheap: no conversion here)."""
        if not self.codes:
            return
        self.rows += len(self.codes)
        self._todo.put((self.t_arr, self.t_dep, self.codes, self.headers, self.part))
        self.part += 1
        self._new_buffers()

    def close(self) -> None:
        self.flush()
        self._todo.put(None)
        self._writer.join()

    def _write_loop(self) -> None:
        while (item := self._todo.get()) is not None:
            *columns, part = item
            write_part(self.dir / f"part-{part:05d}.parquet", frame_columns(*columns, self.offset))


def frame_columns(t_arr: array, t_dep: array, codes: bytearray, headers: bytearray,
                  offset: float = 0.0) -> dict[str, np.ndarray]:
    """Buffered rows -> the telemetry columns (vectorised)."""
    ta = np.frombuffer(t_arr, dtype=np.float64) + offset
    td = np.frombuffer(t_dep, dtype=np.float64) + offset
    c = np.frombuffer(bytes(codes), dtype=np.uint8)
    h = np.frombuffer(bytes(headers), dtype=_HDR)
    has_ports = np.isin(h["proto"], (6, 17)) & ((h["frag"] & 0x1FFF) == 0)
    return {
        "t_arrival": ta,
        "t_departure": td,
        "cls": (c & 1).astype(np.uint8),
        "ecn_in": ((c >> 3) & 3).astype(np.uint8),
        "action": ((c >> 1) & 3).astype(np.uint8),
        "size": np.minimum(h["length"].astype(np.uint32) + ETH_HEADER, 65535).astype(np.uint16),
        "sojourn_ms": ((td - ta) * 1e3).astype(np.float32),
        "src": h["src"].astype(np.uint32),
        "dst": h["dst"].astype(np.uint32),
        "sport": np.where(has_ports, h["sport"], 0).astype(np.uint16),
        "dport": np.where(has_ports, h["dport"], 0).astype(np.uint16),
        "proto": h["proto"].astype(np.uint8),
    }


def write_part(path: Path, columns: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, path)  # readers never see a half-written part

"""A BPF ring buffer of fixed-size records, drained from Python through mmap and numpy.

A callback per record (libbpf's ring_buffer__poll) costs a Python call per packet; here one
drain copies every ready record in one numpy slice. Kernel layout (kernel/bpf/ringbuf.c): a
consumer page (ours to write), then a producer page and the data area mapped twice in a row,
so a record that wraps around the end is still contiguous. Each record has an 8-byte header
whose length word carries a BUSY bit (still being written) and a DISCARD bit.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np

from orchestrator.bottleneck.bpfobj import open_pinned

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR = 8


class RingReader:
    def __init__(self, path: Path, size: int, record: np.dtype) -> None:
        self.size, self.mask = size, size - 1
        self.slot = (record.itemsize + HDR + 7) // 8 * 8
        self.dtype = np.dtype({"names": ["_len", "_pgoff", "rec"],
                               "formats": ["<u4", "<u4", record],
                               "offsets": [0, 4, HDR], "itemsize": self.slot})
        self.record_size = record.itemsize
        fd = open_pinned(path)
        try:
            self.cons = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            self.prod = mmap.mmap(fd, mmap.PAGESIZE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                  offset=mmap.PAGESIZE)
        finally:
            os.close(fd)
        self.data = np.frombuffer(self.prod, dtype=np.uint8, offset=mmap.PAGESIZE)

    def drain(self, max_records: int | None = None) -> np.ndarray:
        """Every complete record available now, oldest first (a copy), and release them."""
        cons = struct.unpack_from("<Q", self.cons, 0)[0]
        prod = struct.unpack_from("<Q", self.prod, 0)[0]
        n = (prod - cons) // self.slot
        if max_records is not None:
            n = min(n, max_records)
        if n <= 0:
            return np.empty(0, dtype=self.dtype["rec"])
        start = cons & self.mask
        recs = self.data[start:start + n * self.slot].view(self.dtype)
        busy = np.flatnonzero(recs["_len"] & BUSY_BIT)
        if busy.size:
            recs = recs[:busy[0]]
        lengths = recs["_len"] & ~np.uint32(BUSY_BIT | DISCARD_BIT)
        if np.any(lengths != self.record_size):
            raise RuntimeError(f"ring buffer record of unexpected size {lengths.max()}")
        out = recs["rec"][(recs["_len"] & DISCARD_BIT) == 0].copy()
        struct.pack_into("<Q", self.cons, 0, cons + len(recs) * self.slot)
        return out

    def close(self) -> None:
        del self.data
        self.prod.close()
        self.cons.close()

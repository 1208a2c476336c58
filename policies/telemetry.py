"""Telemetry written as a directory of Parquet parts.

A process that is killed keeps every part it flushed: a Parquet file is only readable once
its footer is written, so one growing file would lose everything. Readers use
`read(dir)`, which concatenates the parts in order.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd


class PartWriter:
    """Buffers rows (dicts) and writes them as part-NNNNN.parquet every flush_s or flush_rows."""

    def __init__(self, directory: str | Path, flush_rows: int = 50_000, flush_s: float = 1.0,
                 meta: dict[str, Any] | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.rows: list[dict[str, Any]] = []
        self.columns: dict[str, list[Any]] | None = None
        self.part = len(list(self.dir.glob("part-*.parquet")))
        self.last_flush = time.monotonic()
        if meta is not None:
            import json

            (self.dir / "meta.json").write_text(json.dumps(meta, indent=1))

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.rows:
            return
        frame = pd.DataFrame(self.rows)
        self.rows = []
        self.write_frame(frame)

    def write_frame(self, frame: pd.DataFrame) -> None:
        """Write a ready frame as one part (for writers that batch columns themselves)."""
        path = self.dir / f"part-{self.part:05d}.parquet"
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        self.part += 1

    def close(self) -> None:
        self.flush()


def read(directory: str | Path) -> pd.DataFrame:
    """All parts of a telemetry directory as one frame (empty frame if none)."""
    parts = sorted(Path(directory).glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)

"""A results directory as analysis sees it: manifest, flow reports, pcaps, telemetry.

Reading is forgiving on purpose: an aborted run may lack the end time, a flow report or a
whole telemetry directory, and analysis must still say what it can. Every accessor returns
None (or an empty frame) for what is missing; nothing here raises on a missing key.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.spec import units
from policies import telemetry

L4S_ECN = ("ect1", "ce")


def load_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} if it is missing or unreadable (a killed writer)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def flow_class(flow: dict[str, Any]) -> str:
    """'l4s' for L4S senders and ECT(1)/CE traffic (how a DualQ classifies), else 'classic'."""
    return "l4s" if flow.get("kind") == "l4s" or flow.get("ecn") in L4S_ECN else "classic"


class RunDir:
    """One `results/<run-id>/` directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such run directory")
        self.manifest = load_json(self.path / "manifest.json")

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.path.name)

    @property
    def status(self) -> str:
        """'complete' only if the manifest says so; a run left 'running' (its process was
        killed) or without a manifest is 'aborted'."""
        return "complete" if self.manifest.get("status") == "complete" else "aborted"

    @property
    def policy(self) -> str | None:
        return self.manifest.get("policy")

    @property
    def datapath(self) -> str | None:
        return self.manifest.get("datapath")

    @property
    def started(self) -> float | None:
        return _number(self.manifest.get("started"))

    @property
    def ended(self) -> float | None:
        return _number(self.manifest.get("ended"))

    @property
    def scenario_duration_s(self) -> float | None:
        scenario = self.manifest.get("scenario") or {}
        try:
            return units.seconds(scenario.get("duration", "")) if scenario.get("duration") else None
        except ValueError:
            return None

    @property
    def duration_s(self) -> float | None:
        """Wall time from start to end; for a run without an end, the scenario's duration."""
        if self.started is not None and self.ended is not None and self.ended > self.started:
            return self.ended - self.started
        return self.scenario_duration_s

    @property
    def link_rate_bps(self) -> float | None:
        for key in ("link_rate_bps",):
            if _number(self.manifest.get(key)):
                return _number(self.manifest.get(key))
        spec = self.manifest.get("spec") or {}
        rates = [self.manifest.get("link_rate"), (spec.get("bottleneck") or {}).get("rate")]
        rates += [(link.get("bottleneck") or {}).get("rate") for link in spec.get("links") or []
                  if isinstance(link, dict)]
        for rate in rates:
            try:
                return units.rate_bps(rate)
            except ValueError:
                continue
        return None

    @cached_property
    def flows(self) -> list[dict[str, Any]]:
        """The manifest's flows, each merged with its report (report keys win), in order.
        Flows that only have a report (no manifest entry) come last."""
        reports = {p.stem: load_json(p) for p in sorted((self.path / "flows").glob("*.json"))}
        out = []
        for flow in self.manifest.get("flows") or []:
            if isinstance(flow, dict) and flow.get("name"):
                report = reports.pop(flow["name"], {})
                out.append({**flow, **report, "has_report": bool(report)})
        out += [{"name": name, **rep, "has_report": bool(rep)} for name, rep in reports.items()]
        return out

    def pcaps(self, host: str) -> list[Path]:
        """Capture files of `host` (pcap/<host>-<iface>.pcap)."""
        return sorted((self.path / "pcap").glob(f"{host}-*.pcap*"))

    @cached_property
    def packet_meta(self) -> dict[str, Any]:
        return load_json(self.path / "telemetry" / "packets" / "meta.json")

    @property
    def sample_rate(self) -> float:
        rate = _number(self.packet_meta.get("sample_rate"))
        return rate if rate and 0 < rate <= 1 else 1.0

    def packets(self) -> pd.DataFrame:
        """Per-packet bottleneck telemetry (empty if the datapath wrote none)."""
        return read_parts(self.path / "telemetry" / "packets")

    def control(self) -> pd.DataFrame:
        """One row per policy update (empty if there was no control loop)."""
        return read_parts(self.path / "telemetry" / "control")


def read_parts(directory: Path) -> pd.DataFrame:
    """telemetry.read, but a damaged part is skipped rather than fatal: the rest still counts."""
    try:
        return telemetry.read(directory)
    except Exception:  # noqa: BLE001 - pyarrow raises several types for a bad file
        frames = []
        for part in sorted(directory.glob("part-*.parquet")):
            try:
                frames.append(pd.read_parquet(part))
            except Exception:  # noqa: BLE001
                continue
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)

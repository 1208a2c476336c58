"""AQM policies by name: the registry the CLI, specs and datapaths use.

An entry is a Policy subclass, or "module:Class" for a policy whose module is heavy (torch):
it is imported only when the policy is made or described.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

from policies.base import ParamError, Policy
from policies.codel import Codel
from policies.constant import Constant
from policies.dualpi2 import DualPi2
from policies.fifo import Fifo
from policies.pi2 import Pi2
from policies.pie import Pie
from policies.red import Red

REGISTRY: dict[str, type[Policy] | str] = {}


def register(target: type[Policy] | str, name: str | None = None) -> None:
    """Add a policy: `register(MyPolicy)`, or lazily `register("pkg.mod:MyPolicy", "my-name")`."""
    if isinstance(target, str):
        if name is None or ":" not in target:
            raise ValueError(f"lazy registration needs 'module:Class' and a name, got {target!r}, {name!r}")
    else:
        name = name or target.name
    if not name:
        raise ValueError(f"{target!r} has no name")
    REGISTRY[name] = target


def resolve(name: str) -> type[Policy]:
    """The Policy class registered as `name`, importing it if it was registered lazily."""
    if name not in REGISTRY:
        raise ParamError(f"unknown policy '{name}' (known: {', '.join(sorted(REGISTRY))})")
    entry = REGISTRY[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        REGISTRY[name] = entry
    return entry


def make(name: str, args: dict[str, Any] | None = None) -> Policy:
    """A policy from its name and parameters as strings (--policy-arg) or YAML scalars."""
    cls = resolve(name)
    # YAML gives ints, floats and bools: pass them as text so every value takes one parse path
    text = {k: str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, int | float) else v
            for k, v in (args or {}).items()}
    return cls(cls.Params.from_args(text))


def to_config(policy: Policy, seed: int | None = None) -> dict[str, Any]:
    """The policy as plain data for the process that runs it on the router (it builds its own
    copy with from_config: policies are pure, so the copy behaves the same). Exploration noise
    (policies.explore) is carried as its own key, with the run's seed."""
    from policies.explore import Explore

    explore = None
    if isinstance(policy, Explore):
        explore = {"epsilon": policy.epsilon, "spread": policy.spread, "hold": policy.hold,
                   "floor": policy.floor, "seed": seed or 0}
        policy = policy.inner
    # None and NaN are "not set" defaults (aqm-llm's target_return): strict JSON cannot carry a
    # NaN, and the router's copy takes the same default when the key is absent
    args = {k: v for k, v in dataclasses.asdict(policy.params).items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))}
    return {"policy": policy.name, "policy_args": args, "explore": explore}


def from_config(config: dict[str, Any]) -> Policy:
    """The policy to_config described (with its exploration noise, if any)."""
    policy = make(config["policy"], config.get("policy_args", {}))
    if config.get("explore"):
        from policies.explore import Explore

        policy = Explore(policy, **config["explore"])
    return policy


def describe() -> list[dict[str, Any]]:
    """Name, one-line doc, parameters and datapaths of every policy (for `testbed policies`)."""
    out = []
    for name in sorted(REGISTRY):
        try:
            cls = resolve(name)
        except (ImportError, AttributeError) as e:  # an optional part (the ML extra) is missing
            out.append({"name": name, "doc": f"unavailable: {e}", "params": [], "datapaths": []})
            continue
        out.append({
            "name": name,
            "doc": next(iter((cls.__doc__ or "").strip().splitlines()), ""),
            "params": [{"name": n, "default": d, "help": h} for n, d, h in cls.Params.describe()],
            "datapaths": list(cls.datapaths),
            "per_packet": cls.per_packet,
            "datapath_notes": dict(cls.datapath_notes),
        })
        if hasattr(cls, "effective_gains"):  # what runs with the defaults
            out[-1]["effective_gains"] = cls().effective_gains()
    return out


for _cls in (Fifo, Red, Codel, Pie, Pi2, DualPi2, Constant):
    register(_cls)
# the AQM-LLM policies (policies/aqm_llm/) import torch: registered by path, imported on use
register("policies.aqm_llm.policy:AqmLlmPolicy", "aqm-llm")
register("policies.aqm_llm.student:StudentPolicy", "aqm-llm-student")

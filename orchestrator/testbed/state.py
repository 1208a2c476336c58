"""What is up, kept in STATE_ROOT/<name>/state.json so `testbed down` works from another
shell and after the orchestrator was killed. Names are validated before they become paths, and
the state folder is never followed outside STATE_ROOT (`down` deletes it)."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import UserError
from orchestrator.spec.names import is_testbed_name
from orchestrator.testbed.base import (  # noqa: F401 - where the state lives: the base saves it
    STATE_ROOT,
    Bottleneck,
    Host,
    Interface,
    Process,
    Testbed,
    state_dir_of,
)


def read(name: str | None = None) -> dict[str, Any]:
    """The state of the testbed that is up under `name` (or the only one up), as saved."""
    name = only_up() if name is None else name
    path = state_dir_of(name) / "state.json"
    if not path.exists():
        raise UserError(f"no testbed named {name!r} is up (no {path})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"testbed {name!r}: unreadable state file {path}: {e}") from None
    if not isinstance(data, dict) or data.get("name") != name:
        raise UserError(f"testbed {name!r}: state file {path} names another testbed; refusing it")
    return data


def restore(cls: type[Testbed], data: dict[str, Any]) -> Testbed:
    """A testbed of provider class `cls` from its saved state (see read)."""
    # only the fields a Host has: state files of older versions carry more (e.g. 'netns')
    hosts = {k: Host(v["name"], v["role"], [Interface(**i) for i in v["interfaces"]])
             for k, v in data["hosts"].items()}
    tb = cls(data["name"], data["spec"], hosts, Bottleneck(**data["bottleneck"]), data.get("extra"))
    tb.processes = [Process(**p) for p in data["processes"]]
    tb.cleanups = data["cleanups"]
    tb.status = data["status"]
    return tb


def names_up() -> list[str]:
    if not STATE_ROOT.exists():
        return []
    return sorted(p.parent.name for p in STATE_ROOT.glob("*/state.json")
                  if is_testbed_name(p.parent.name) and not p.parent.is_symlink())


def only_up() -> str:
    up = names_up()
    if len(up) == 1:
        return up[0]
    if not up:
        raise UserError("no testbed is up; start one with `testbed up testbeds/mininet-like.yaml`")
    raise UserError(f"several testbeds are up ({', '.join(up)}); name one with --testbed NAME")

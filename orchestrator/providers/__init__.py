"""Providers build testbeds: `netns` on this machine, `ssh` on existing machines.

The one registry of providers: `up`, `down` and `load` look a provider up here by name (the
name a testbed file and a state file carry), so nothing else dispatches on it. Provider
modules are imported on use: the ssh one pulls in paramiko and Ansible's runner.
"""

from __future__ import annotations

import fcntl
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, get_args

from orchestrator.errors import UserError
from orchestrator.spec.schema import Provider
from orchestrator.testbed import state
from orchestrator.testbed.base import STATE_ROOT, state_dir_of

if TYPE_CHECKING:
    from orchestrator.spec.schema import Spec
    from orchestrator.testbed.base import Testbed

# name -> the module with TESTBED (the class), up(spec), down(name, tb) and leftover_names();
# the names are the ones a testbed file may give (spec.schema.Provider)
PROVIDERS = {name: f"orchestrator.providers.{name}" for name in get_args(Provider)}
log = logging.getLogger(__name__)


def provider(name: str) -> ModuleType:
    if name not in PROVIDERS:
        raise UserError(f"unknown provider {name!r} (expected {' or '.join(PROVIDERS)})")
    return importlib.import_module(PROVIDERS[name])


def testbed_class(name: str) -> type[Testbed]:
    return provider(name).TESTBED


def up(spec: Spec, progress: Callable[[str], None] | None = None) -> Testbed:
    """Build the testbed `spec` describes with its provider, holding the name's lock: of two
    simultaneous `up` of one name, the second fails at once instead of building, failing
    and rolling back (which removed the first one's namespaces)."""
    module = provider(spec.provider)
    with up_lock(spec.name):
        # `progress`: a line per phase, for the providers that report them
        if progress is not None and "progress" in inspect.signature(module.up).parameters:
            return module.up(spec, progress=progress)
        return module.up(spec)


@contextmanager
def up_lock(name: str) -> Iterator[None]:
    """An exclusive lock on STATE_ROOT/.locks/<name>.lock, outside the state folder that
    `down` deletes; the kernel drops it when the holder dies, so a kill -9 leaves no stale lock."""
    state_dir_of(name)  # validates the name before it becomes a path
    locks = STATE_ROOT / ".locks"  # not a testbed name, so never taken for a state folder
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"testbed {name!r} is being built by another `testbed up`; "
                            f"wait for it, then `testbed status {name}`") from None
        yield
    finally:
        os.close(fd)


def load(name: str | None = None) -> Testbed:
    """The testbed that is up under `name` (or the only one up)."""
    data = state.read(name)
    return state.restore(testbed_class(data["provider"]), data)


def down(name: str) -> list[str]:
    """Tear testbed `name` down, whatever state it is in; returns what was removed. Every
    datapath cleans up first (also after a kill -9 of a run), then the provider replays the
    cleanup records and removes the rest (see teardown)."""
    from orchestrator.providers import teardown

    try:
        tb: Testbed | None = load(name)
    except (UserError, ValueError, KeyError, TypeError):
        tb = None  # no state, or an unreadable one: the provider still finds what is left
    if tb is not None:
        for warning in teardown.clean_datapaths(tb):
            log.warning(warning)
    return provider(tb.provider if tb is not None else "netns").down(name, tb)


def leftover_names() -> set[str]:
    """Names of testbeds that left kernel objects behind but have no state (any provider)."""
    return set().union(*(provider(p).leftover_names() for p in PROVIDERS))

"""Names that reach the kernel or the filesystem, and the one rule each must follow.

A testbed name becomes part of namespace names (`tb-<name>-<host>`) and of the state path
(`STATE_ROOT/<name>`), so every name from a file or the command line passes `testbed_name`
before it is used: a name like `../../victim` must never become a path.
"""

from __future__ import annotations

import re

from orchestrator.errors import UserError

# interface names are at most 15 bytes, namespace names carry the testbed and host names
TESTBED_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")
HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")
TESTBED_NAME_RULE = "1-10 lowercase letters and digits starting with a letter"


def is_testbed_name(name: str) -> bool:
    return isinstance(name, str) and bool(TESTBED_NAME.fullmatch(name))


def testbed_name(name: str) -> str:
    """`name` if it is a valid testbed name, else a UserError that says the rule."""
    if not is_testbed_name(name):
        raise UserError(f"bad testbed name {name!r}: expected {TESTBED_NAME_RULE}")
    return name

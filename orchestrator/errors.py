"""Errors a user can fix. The CLI prints them in one line and exits non-zero, no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from policies.errors import ParamError, PolicyError

# what the policies package raises for input a user can fix (it has its own errors, as it
# imports nothing from here); the CLI prints these like a UserError
POLICY_ERRORS = (PolicyError, ParamError)


class UserError(Exception):
    """Bad input or an unmet precondition; the message says what and where."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so the same cleanup runs; the CLI then exits 143
    (128 + SIGTERM, what shells and supervisors expect) instead of Ctrl-C's 130."""


def exit_code_of(interrupt: KeyboardInterrupt) -> int:
    return 143 if isinstance(interrupt, Terminated) else 130


class SpecError(UserError):
    """A testbed or scenario file is wrong. Names the file, the key path and what was expected."""

    def __init__(self, file: str, path: str, message: str) -> None:
        self.file, self.path, self.message = file, path, message
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {message}")


@contextmanager
def policy_errors() -> Iterator[None]:
    """Turn the policies package's errors into a UserError (where the library calls it)."""
    try:
        yield
    except POLICY_ERRORS as e:
        raise UserError(str(e)) from None

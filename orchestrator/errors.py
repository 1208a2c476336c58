"""Errors a user can fix. The CLI prints them in one line and exits non-zero, no traceback."""


class UserError(Exception):
    """Bad input or an unmet precondition; the message says what and where."""


class SpecError(UserError):
    """A testbed or scenario file is wrong. Names the file, the key path and what was expected."""

    def __init__(self, file: str, path: str, message: str) -> None:
        self.file, self.path, self.message = file, path, message
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {message}")

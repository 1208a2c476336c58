"""The `testbed` command. Thin: every command calls the library and formats its answer."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import click

from orchestrator.errors import POLICY_ERRORS, Terminated, UserError, exit_code_of

# TESTBED_DEBUG=1: unexpected errors propagate with their traceback (for tests and debugging)
DEBUG_ENV = "TESTBED_DEBUG"
# where the last-resort handler writes the traceback of an unexpected error
LOG_DIR_ENV = "TESTBED_LOG_DIR"
# exit code of an unexpected error (EX_SOFTWARE): distinct from a user error's 2
EXIT_BUG = 70


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build L4S testbeds, run AQM experiments on them, and train the AQM-LLM policy."""


def _register() -> None:
    """Commands that live beside the library areas they drive (commands/); each module lists
    its commands in COMMANDS."""
    from orchestrator.commands import analysis, check, collect, crosscheck, ml, regress, run, testbed, trace
    from orchestrator.commands import policies as policies_cmd

    for module in (testbed, check, run, analysis, ml, policies_cmd, regress, collect, trace, crosscheck):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def crash_log(exc: BaseException) -> Path | None:
    """Write the traceback of an unexpected error to a private file; its path, or None when
    no file could be written (the user then still gets the one line)."""
    root = Path(os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / "testbed-logs")
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=time.strftime("crash-%Y%m%d-%H%M%S-"), suffix=".log",
                                    dir=root)
        with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600, a traceback may hold paths
            f.write(f"argv: {sys.argv!r}\n")
            f.write("".join(traceback.format_exception(exc)))
        return Path(name)
    except OSError:
        return None


def _on_sigterm(signum: int, frame: Any) -> None:
    # like Ctrl-C, so every command's cleanup runs; main() then exits 143
    raise Terminated


def main() -> None:
    # files this tool and its children write (state, results, pcaps, logs): readable by the
    # owner's group at most, not by every user of a shared machine
    os.umask(0o027)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(standalone_mode=False)
    except (UserError, *POLICY_ERRORS) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        click.echo("terminated" if isinstance(e, Terminated) else "interrupted", err=True)
        sys.exit(exit_code_of(e))
    except Exception as e:  # noqa: BLE001 - the last resort: a user never sees a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        log = crash_log(e)
        where = f"; full log: {log}" if log else ""
        first = str(e).splitlines()[0] if str(e) else ""
        click.echo(f"internal error: {type(e).__name__}: {first}{where} "
                   f"(a bug: please report it with the log)", err=True)
        sys.exit(EXIT_BUG)


if __name__ == "__main__":
    main()

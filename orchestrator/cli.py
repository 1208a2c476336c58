"""The `testbed` command. Thin: every command calls the library and formats its answer."""

from __future__ import annotations

import sys

import click

from orchestrator.errors import POLICY_ERRORS, UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build L4S testbeds, run AQM experiments on them, and train the AQM-LLM policy."""


def _register() -> None:
    """Commands that live beside the library areas they drive (commands/); each module lists
    its commands in COMMANDS."""
    from orchestrator.commands import analysis, collect, crosscheck, ml, regress, run, testbed, trace
    from orchestrator.commands import policies as policies_cmd

    for module in (testbed, run, analysis, ml, policies_cmd, regress, collect, trace, crosscheck):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
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
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

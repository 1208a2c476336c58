"""The `testbed` command. Thin: every command calls the library and formats its answer."""

from __future__ import annotations

import importlib
import json
import os
import sys

import click

from orchestrator import testbed as tbmod
from orchestrator.errors import UserError
from orchestrator.names import is_testbed_name, testbed_name


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build L4S testbeds, run AQM experiments on them, and train the AQM-LLM policy."""


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", help="Build it under this name instead of the file's (e.g. a second copy).")
def up(file: str, name: str | None) -> None:
    """Build the testbed described by FILE (YAML)."""
    from orchestrator import spec as specmod
    from orchestrator.providers import netns, ssh

    spec = specmod.load(file)
    if name is not None:
        spec = spec.model_copy(update={"name": testbed_name(name)})
    tb = ssh.up(spec) if spec.provider == "ssh" else netns.up(spec)
    bn = tb.bottleneck
    click.echo(f"testbed {tb.name!r} is up: {len(tb.hosts)} hosts, bottleneck {bn.router}:{bn.egress} "
               f"{bn.rate_bps / 1e6:g} Mbit/s, base RTT {bn.rtt_s * 1e3:g} ms, "
               f"buffer {bn.buffer_pkts} packets, delay by {bn.delay_mode}")


@cli.command()
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Tear down every testbed of this tool.")
def down(name: str | None, all_: bool) -> None:
    """Tear down testbed NAME (or the only one up). Safe to repeat."""

    if all_:
        names = sorted(set(tbmod.names_up()) | _leftover_names())
    elif name is not None:
        names = [testbed_name(name)]
    else:
        names = tbmod.names_up() or sorted(_leftover_names())
        if len(names) > 1:
            raise UserError(f"several testbeds are up ({', '.join(names)}); name one or use --all")
    if not names:
        click.echo("no testbed is up; nothing to do")
    for n in names:
        removed = _down_one(n)
        click.echo(f"testbed {n!r} is down ({len(removed)} objects removed)")


def _down_one(name: str) -> list[str]:
    from orchestrator.providers import netns, ssh

    try:
        tb = tbmod.load(name)
    except (UserError, ValueError, KeyError, TypeError):
        tb = None
    if tb is not None:
        for cls in _datapath_classes():
            try:
                cls.clean(tb)
            except Exception as e:  # noqa: BLE001 - down must go on whatever a datapath says
                click.echo(f"warning: {cls.name} cleanup: {e}", err=True)
    if tb is not None and tb.provider == "ssh":
        return ssh.down(name)
    return netns.down(name)


def _datapath_classes() -> list:
    out = []
    for mod, cls in (("ebpf", "EbpfDatapath"), ("nfqueue", "NfqueueDatapath"), ("kernel", "KernelDatapath")):
        try:
            out.append(getattr(importlib.import_module(f"orchestrator.bottleneck.{mod}"), cls))
        except (ImportError, AttributeError):
            pass
    return out


def _leftover_names() -> set[str]:
    import subprocess

    from orchestrator.providers.netns import NS_PREFIX

    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = {line.split()[0][len(NS_PREFIX):].rsplit("-", 1)[0]
             for line in out.splitlines() if line.startswith(NS_PREFIX)}
    return {n for n in names if is_testbed_name(n)}


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def status(name: str | None, as_json: bool) -> None:
    """Show the testbeds that are up: hosts, roles, addresses, links, processes."""
    from orchestrator.status import describe, render

    names = [testbed_name(name)] if name is not None else tbmod.names_up()
    info = [describe(tbmod.load(n)) for n in names]
    if as_json:
        click.echo(json.dumps(info, indent=1))
    elif not info:
        click.echo("no testbed is up")
    else:
        for item in info:
            click.echo(render(item))


@cli.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED, required=True)
@click.option("--testbed", "name", help="Testbed name (default: the only one up).")
def exec_(host: str, argv: tuple[str, ...], name: str | None) -> None:
    """Run a command on HOST:  testbed exec s1 -- ping -c 3 10.0.3.2"""
    tb = tbmod.load(name)
    full = tb.argv_on(host, list(argv))
    os.execvp(full[0], full)


def _register_optional() -> None:
    """Commands that live beside the library areas they drive."""
    for mod in ("orchestrator.commands.run", "orchestrator.commands.analysis",
                "orchestrator.commands.ml", "orchestrator.commands.policies",
                "orchestrator.commands.bench", "orchestrator.commands.regress",
                "orchestrator.commands.collect"):
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        for command in getattr(module, "COMMANDS", []):
            cli.add_command(command)


_register_optional()


def main() -> None:
    from policies.base import ParamError

    try:
        cli.main(standalone_mode=False)
    except (UserError, ParamError) as e:  # a bad policy parameter is the user's to fix too
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

"""`testbed up | down | status | exec`: a testbed's life, through the provider registry."""

from __future__ import annotations

import os

import click

from orchestrator import providers, strictjson
from orchestrator.commands.view import delay_words
from orchestrator.errors import UserError
from orchestrator.spec.names import testbed_name
from orchestrator.testbed import state


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", help="Build it under this name instead of the file's (e.g. a second copy).")
def up(file: str, name: str | None) -> None:
    """Build the testbed described by FILE (YAML)."""
    from orchestrator.spec import schema

    spec = schema.load(file)
    if name is not None:
        spec = spec.model_copy(update={"name": testbed_name(name)})
    click.echo(f"building testbed {spec.name!r}: {len(spec.hosts)} hosts, {len(spec.links)} links",
               err=True)
    tb = providers.up(spec, progress=lambda msg: click.echo(f"  {msg}", err=True))
    bn = tb.bottleneck
    click.echo(f"testbed {tb.name!r} is up: {len(tb.hosts)} hosts, bottleneck {bn.router}:{bn.egress} "
               f"{bn.rate_bps / 1e6:g} Mbit/s, base RTT {bn.rtt_s * 1e3:g} ms, "
               f"buffer {bn.buffer_pkts} packets, {delay_words(bn.rtt_s, bn.delay_mode)}")
    dyn = spec.bottleneck.dynamics()
    if dyn.dynamic:  # the figures above are the nominal ones; runs apply the schedule
        from orchestrator.spec.dynamic import describe

        click.echo(f"the link changes during each run: {describe(dyn)}")


@click.command()
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True,
              help="Tear down every testbed this tool's state knows (see `testbed status`).")
def down(name: str | None, all_: bool) -> None:
    """Tear down testbed NAME (or the only one up). Safe to repeat.

    Without NAME it acts only when exactly one testbed is up; namespaces named like a testbed
    but unknown to the state (another tool's, or another state root's) are never removed
    unless named."""
    known = state.names_up()
    if all_:
        names = known
    elif name is not None:
        names = [testbed_name(name)]
    else:
        if len(known) > 1:
            raise UserError(f"several testbeds are up ({', '.join(known)}); name one "
                            f"(`testbed down NAME`) or use --all")
        names = known
    if not names:
        stray = sorted(providers.leftover_names() - set(known))
        hint = (f" (namespaces of {', '.join(stray)} exist without state here; remove one with "
                f"`testbed down NAME` if it is yours)" if stray else "")
        click.echo(f"no testbed is up; nothing to do{hint}")
    for n in names:
        removed = providers.down(n)
        click.echo(f"testbed {n!r} is down ({len(removed)} objects removed)")


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def status(name: str | None, as_json: bool) -> None:
    """Show the testbeds that are up: hosts, roles, addresses, links, processes."""
    from orchestrator.commands.view import render_status
    from orchestrator.testbed.status import describe

    names = [testbed_name(name)] if name is not None else state.names_up()
    info = [describe(providers.load(n)) for n in names]
    if as_json:
        click.echo(strictjson.dumps(info, indent=1))
    elif not info:
        click.echo("no testbed is up")
    else:
        for item in info:
            click.echo(render_status(item))


@click.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED, required=True)
@click.option("--testbed", "name", help="Testbed name (default: the only one up).")
def exec_(host: str, argv: tuple[str, ...], name: str | None) -> None:
    """Run a command on HOST:  testbed exec s1 -- ping -c 3 10.0.3.2"""
    tb = providers.load(name)
    full = tb.argv_on(host, list(argv))
    os.execvp(full[0], full)


COMMANDS = [up, down, status, exec_]

"""`testbed check`: validate a testbed file (and a scenario file) without building anything."""

from __future__ import annotations

import click


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--scenario", "scenario_file", type=click.Path(dir_okay=False),
              help="Also check this scenario file against the testbed's hosts.")
def check(file: str, scenario_file: str | None) -> None:
    """Check the testbed file FILE (and a scenario) as `up` and `run` would; build nothing.

    Prints one line per file; exits 2 with the file, key path and expected value when one is
    wrong."""
    from orchestrator.spec import scenario as scenario_mod
    from orchestrator.spec import schema

    spec = schema.load(file)
    bn = spec.bottleneck
    click.echo(f"{file}: ok: testbed {spec.name!r}, {len(spec.hosts)} hosts, {len(spec.links)} "
               f"links, bottleneck {bn.rate}, RTT {bn.rtt_s * 1e3:g} ms, buffer "
               f"{bn.buffer_pkts()} packets"
               + (f", scenario of {len(spec.scenario.flows)} flows" if spec.scenario else ""))
    if scenario_file is not None:
        sc = scenario_mod.load(scenario_file, spec.roles())
        click.echo(f"{scenario_file}: ok: {len(sc.flows)} flows over {sc.duration_s:g} s")


COMMANDS = [check]

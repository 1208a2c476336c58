"""`testbed collect` and `testbed evaluate`: the AQM-LLM's data and its held-out test."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.commands.run import parse_policy_args


@click.command()
@click.option("--matrix", default="scenarios/collect.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Scenario matrix.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Collection directory (reused to resume).")
@click.option("--testbed", "name", help="Testbed name (default: the only one up).")
def collect(matrix: str, out: str, name: str | None) -> None:
    """Run the matrix's training scenarios with exploring behaviour policies; write a pool."""
    from orchestrator import providers
    from orchestrator.commands.view import RunProgress
    from orchestrator.experiment import collect as col
    from orchestrator.experiment.points import is_complete

    tb = providers.load(name)
    state = col.start(matrix, Path(out))
    todo = [p for p in state["points"] if not p["held_out"] and not is_complete(p)]
    click.echo(f"{len(todo)} scenarios to run, {sum(p['held_out'] for p in state['points'])} held out")
    with RunProgress() as progress:
        pool = col.collect(tb, Path(out), progress.update)
    click.echo(f"pool: {pool}")


@click.command()
@click.option("--out", required=True, type=click.Path(exists=True, file_okay=False),
              help="Collection directory made by `testbed collect`.")
@click.option("--policy", "specs", multiple=True, metavar="NAME[:KEY=VALUE,...]",
              help="Policy to evaluate, repeatable (default: dualpi2 and pie).")
@click.option("--repeat", default=3, show_default=True)
@click.option("--testbed", "name", help="Testbed name (default: the only one up).")
def evaluate(out: str, specs: tuple[str, ...], repeat: int, name: str | None) -> None:
    """Run policies closed loop on the held-out scenarios; print one table with spread."""
    from orchestrator import providers
    from orchestrator.commands.view import RunProgress
    from orchestrator.experiment import collect as col

    tb = providers.load(name)
    chosen = []
    for spec in specs or ("dualpi2", "pie"):
        policy, _, args = spec.partition(":")
        chosen.append((policy, parse_policy_args(tuple(a for a in args.split(",") if a))))
    with RunProgress() as progress:
        rows = col.evaluate(tb, Path(out), chosen, repeat, progress.update)
    frame = col.table(Path(out), rows)
    click.echo(frame.to_string(float_format=lambda x: f"{x:.3f}"))
    frame.to_csv(Path(out) / "evaluation.csv")
    click.echo(f"table: {Path(out) / 'evaluation.csv'}")


COMMANDS = [collect, evaluate]

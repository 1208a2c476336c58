"""`testbed collect` and `testbed evaluate`: the AQM-LLM's data and its held-out test."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.commands.run import parse_policy_spec
from orchestrator.errors import POLICY_ERRORS, UserError


@click.command()
@click.option("--matrix", default="scenarios/collect.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Scenario matrix.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Collection directory (reused to resume).")
@click.option("--testbed", "name", help="Testbed name (default: the only one up).")
@click.option("--shard", default="0/1", show_default=True, metavar="I/N",
              help="Run only shard I of N (points whose index modulo N is I): one per machine, then "
                   "`testbed pool build` merges their pools (playbooks/collect.yml does both).")
def collect(matrix: str, out: str, name: str | None, shard: str) -> None:
    """Run the matrix's training scenarios with exploring behaviour policies; write a pool."""
    from orchestrator import providers
    from orchestrator.commands.view import RunProgress
    from orchestrator.experiment import collect as col

    try:
        part = col.parse_shard(shard)
    except ValueError as e:
        raise UserError(f"--shard: {e}") from None
    tb = providers.load(name)
    state = col.start(matrix, Path(out), part)
    todo = [p for i, p in enumerate(state["points"]) if col.to_collect(i, p, part)]
    click.echo(f"{len(todo)} scenarios to run in shard {part[0]}/{part[1]}, "
               f"{sum(p['held_out'] for p in state['points'])} held out")
    with RunProgress() as progress:
        pool = col.collect(tb, Path(out), progress.update, part)
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
    import policies
    from orchestrator import providers
    from orchestrator.commands.view import RunProgress
    from orchestrator.experiment import collect as col

    if not (Path(out) / "collect.json").is_file():
        raise UserError(f"--out: {out} is not a collection folder (no collect.json); "
                        f"make one with `testbed collect --out {out}`")
    if repeat < 1:
        raise UserError(f"--repeat: expected 1 or more, got {repeat}")
    chosen = []
    for spec in specs or ("dualpi2", "pie"):
        policy, parsed = parse_policy_spec(spec)
        try:  # every spec before the first run: a typo in the last must not cost the others
            policies.make(policy, parsed)
        except POLICY_ERRORS as e:
            raise UserError(f"--policy {spec}: {e}") from None
        chosen.append((policy, parsed))
    tb = providers.load(name)
    with RunProgress() as progress:
        rows = col.evaluate(tb, Path(out), chosen, repeat, progress.update)
    runs = col.records(Path(out), rows)
    views = ((("link", "policy"), "evaluation.csv"), (("scenario", "policy"), "evaluation-scenarios.csv"))
    for keys, name in views:
        frame = col.table(runs, keys)
        click.echo(frame.to_string(float_format=lambda x: f"{x:.3f}"))
        frame.to_csv(Path(out) / name)
        click.echo(f"table: {Path(out) / name}\n")


COMMANDS = [collect, evaluate]

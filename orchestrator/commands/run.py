"""`testbed run`: an experiment, a repeated experiment, or a sweep, on the testbed that is up."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from orchestrator import bottleneck
from orchestrator.errors import UserError, exit_code_of
from orchestrator.experiment import results
from orchestrator.spec import scenario as scenario_mod


def parse_policy_args(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--policy-arg: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def parse_policy_spec(text: str) -> tuple[str, dict[str, str]]:
    """NAME[:KEY=VALUE,...] (as --policy takes it in run, evaluate and the benchmarks) ->
    (name, arguments)."""
    name, _, inline = text.partition(":")
    return name, parse_policy_args(tuple(a for a in inline.split(",") if a))


def load_scenario(path: str | None, tb: Any) -> Any:
    """The scenario from FILE, else the testbed file's own."""
    spec = tb.spec()
    if path is None:
        if spec.scenario is None:
            raise UserError(f"testbed {tb.name!r} has no scenario; give one with --scenario FILE")
        return spec.scenario
    return scenario_mod.load(path, spec.roles())


@click.command()
@click.option("--policy", metavar="NAME[:KEY=VALUE,...]",
              help="AQM policy (see `testbed policies`), optionally with parameters as in `testbed "
                   "evaluate`. Default: the scenario's, else dualpi2.")
@click.option("--datapath", type=click.Choice(bottleneck.names()),
              help="Where the policy runs (default: the scenario's, else nfqueue).")
@click.option("--scenario", "scenario_file", type=click.Path(dir_okay=False),
              help="Scenario file (default: the testbed file's scenario).")
@click.option("--duration", type=float, help="Seconds (default: the scenario's).")
@click.option("--repeat", type=int, default=1, show_default=True, help="Repetitions of each point.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the first repetition.")
@click.option("--policy-arg", "policy_args", multiple=True, metavar="KEY=VALUE",
              help="Policy parameter; repeat for several.")
@click.option("--testbed", "name", help="Testbed name (default: the only one up).")
@click.option("--results", "results_root", type=click.Path(file_okay=False), default="results",
              show_default=True, help="Folder the run (or sweep) folders are created in.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False),
              help="Resume a sweep directory: run only its points not yet complete.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def run(policy: str | None, datapath: str | None, scenario_file: str | None, duration: float | None,
        repeat: int, seed: int, policy_args: tuple[str, ...], name: str | None, results_root: str,
        resume: str | None, as_json: bool) -> None:
    """Run an experiment on the testbed that is up, and analyse it."""
    from orchestrator import providers
    from orchestrator.bottleneck import DEFAULT_DATAPATH
    from orchestrator.commands.view import RunProgress, print_summary
    from orchestrator.experiment import sweep
    from orchestrator.experiment.run import RunConfig

    if duration is not None and not 0 < duration <= scenario_mod.MAX_DURATION_S:
        raise UserError(f"--duration: expected seconds from 0 to "
                        f"{scenario_mod.MAX_DURATION_S:g}, got {duration:g}")
    if repeat < 1:
        raise UserError(f"--repeat: expected 1 or more, got {repeat}")
    if resume and not (Path(resume) / "sweep.json").is_file():
        raise UserError(f"--resume: {resume} is not a sweep folder (it has no sweep.json)")
    tb = providers.load(name)
    results.writable_root(Path(results_root))
    results.mark_orphans(Path(results_root))
    if resume:
        sweep_dir = Path(resume)
    else:
        scenario = load_scenario(scenario_file, tb)
        policy, inline_args = parse_policy_spec(policy or "")  # NAME:KEY=VALUE,... as evaluate takes it
        args = {**scenario.policy_args, **inline_args, **parse_policy_args(policy_args)}
        config = RunConfig(policy=policy or scenario.policy or "dualpi2",
                           datapath=datapath or scenario.datapath or DEFAULT_DATAPATH,
                           policy_args=args, duration_s=duration, seed=seed)
        if policy and "policy" in scenario.sweep:
            scenario = scenario.model_copy(update={"sweep": {k: v for k, v in scenario.sweep.items()
                                                             if k != "policy"}})
        if not scenario.sweep and repeat == 1:
            source = scenario_file or tb.spec().source or f"testbed {tb.name!r}"
            _single(tb, scenario, config, Path(results_root), as_json, source)
            return
        sweep_dir = sweep.create(Path(results_root), scenario, config, repeat)
    with RunProgress() as progress:
        runs = sweep.execute(tb, sweep_dir, progress.update,
                             on_run=lambda d: progress.log(f"done: {d}"),
                             on_warning=lambda w: click.echo(f"warning: {w}", err=True))
    for run_dir in runs:
        print_summary(run_dir, as_json)
    if not as_json:  # every point in one table: D_SS per flow and Jain (analysis/steady.py)
        from orchestrator.analysis.steady import sweep_table

        click.echo("\n".join(sweep_table(sweep_dir)))
    click.echo(f"sweep: {sweep_dir} ({len(runs)} runs)")


def _single(tb: Any, scenario: Any, config: Any, root: Path, as_json: bool, source: str) -> None:
    from orchestrator.commands.view import RunProgress, print_summary
    from orchestrator.experiment.run import Run

    config.results_root = root
    try:
        run_ = Run(tb, scenario, config)
    except UserError as e:
        # the checks against the testbed (flows, policy, datapath) happen here: say which
        # file the scenario came from
        raise UserError(str(e) if source in str(e) else f"{source}: {e}") from None
    for warning in run_.warnings:
        click.echo(f"warning: {warning}", err=True)
    try:
        with RunProgress(total_s=run_.scenario.duration_s) as progress:
            run_dir = run_.execute(progress.update)
    except KeyboardInterrupt as e:
        if run_.dir is not None:
            click.echo(f"run aborted; partial results kept in {run_.dir}", err=True)
        sys.exit(exit_code_of(e))
    print_summary(run_dir, as_json)


COMMANDS = [run]

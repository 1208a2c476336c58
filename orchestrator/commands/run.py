"""`testbed run`: an experiment, a repeated experiment, or a sweep, on the testbed that is up."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml

from orchestrator import results
from orchestrator.errors import SpecError, UserError


def parse_policy_args(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--policy-arg: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def load_scenario(path: str | None, tb: Any) -> Any:
    """The scenario from FILE (a file with a `scenario:` key, or the scenario itself), else the
    testbed file's own."""
    from pydantic import ValidationError

    from orchestrator.scenario import Scenario
    from orchestrator.spec import _message, key_path

    spec = tb.spec()
    if path is None:
        if spec.scenario is None:
            raise UserError(f"testbed {tb.name!r} has no scenario; give one with --scenario FILE")
        return spec.scenario
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(path, "", f"cannot read the file: {e}") from None
    except yaml.YAMLError as e:
        raise SpecError(path, "", f"not valid YAML: {e}") from None
    prefix = ""
    if isinstance(data, dict) and "scenario" in data:
        data, prefix = data["scenario"], "scenario."
    if not isinstance(data, dict):
        raise SpecError(path, prefix.rstrip("."), "expected a mapping with 'flows'")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise SpecError(path, prefix + key_path(err["loc"]), _message(err)) from None
    scenario.check(spec, path, prefix)
    return scenario


@click.command()
@click.option("--policy", metavar="NAME[:KEY=VALUE,...]",
              help="AQM policy (see `testbed policies`), optionally with parameters as in `testbed "
                   "evaluate`. Default: the scenario's, else dualpi2.")
@click.option("--datapath", type=click.Choice(["nfqueue", "ebpf", "kernel", "dummynet"]),
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
              show_default=True)
@click.option("--resume", type=click.Path(exists=True, file_okay=False),
              help="Resume a sweep directory: run only its points not yet complete.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def run(policy: str | None, datapath: str | None, scenario_file: str | None, duration: float | None,
        repeat: int, seed: int, policy_args: tuple[str, ...], name: str | None, results_root: str,
        resume: str | None, as_json: bool) -> None:
    """Run an experiment on the testbed that is up, and analyse it."""
    from orchestrator import sweep
    from orchestrator import testbed as tbmod
    from orchestrator.run import DEFAULT_DATAPATH, RunConfig
    from orchestrator.view import RunProgress, print_summary

    tb = tbmod.load(name)
    results.mark_orphans(Path(results_root))
    if repeat < 1:
        raise UserError(f"--repeat: expected 1 or more, got {repeat}")
    if resume:
        sweep_dir = Path(resume)
    else:
        scenario = load_scenario(scenario_file, tb)
        policy, _, inline = (policy or "").partition(":")  # NAME:KEY=VALUE,... as evaluate takes it
        policy = policy or None
        inline_args = tuple(a for a in inline.split(",") if a)
        args = {**scenario.policy_args, **parse_policy_args(inline_args), **parse_policy_args(policy_args)}
        config = RunConfig(policy=policy or scenario.policy or "dualpi2",
                           datapath=datapath or scenario.datapath or DEFAULT_DATAPATH,
                           policy_args=args, duration_s=duration, seed=seed)
        if policy and "policy" in scenario.sweep:
            scenario = scenario.model_copy(update={"sweep": {k: v for k, v in scenario.sweep.items()
                                                             if k != "policy"}})
        if not scenario.sweep and repeat == 1:
            _single(tb, scenario, config, Path(results_root), as_json)
            return
        sweep_dir = sweep.create(Path(results_root), scenario, config, repeat)
    with RunProgress() as progress:
        runs = sweep.execute(tb, sweep_dir, progress.update,
                             on_run=lambda d: progress.log(f"done: {d}"))
    for run_dir in runs:
        print_summary(run_dir, as_json)
    click.echo(f"sweep: {sweep_dir} ({len(runs)} runs)")


def _single(tb: Any, scenario: Any, config: Any, root: Path, as_json: bool) -> None:
    from orchestrator.run import Run
    from orchestrator.view import RunProgress, print_summary

    config.results_root = root
    run_ = Run(tb, scenario, config)
    try:
        with RunProgress(total_s=run_.scenario.duration_s) as progress:
            run_dir = run_.execute(progress.update)
    except KeyboardInterrupt:
        if run_.dir is not None:
            click.echo(f"run aborted; partial results kept in {run_.dir}", err=True)
        sys.exit(130)
    print_summary(run_dir, as_json)


COMMANDS = [run]

"""`testbed crosscheck`: one scenario and policy on every datapath that runs it, side by side."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from orchestrator.commands.run import load_scenario, parse_policy_args
from orchestrator.errors import UserError


@click.command()
@click.option("--policy", default="dualpi2", show_default=True, help="AQM policy.")
@click.option("--policy-arg", "policy_args", multiple=True, metavar="KEY=VALUE",
              help="Policy parameter; repeat for several.")
@click.option("--scenario", "scenario_file", type=click.Path(dir_okay=False),
              help="Scenario file (default: the testbed file's scenario).")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds per run.")
@click.option("--repeat", type=int, default=3, show_default=True, help="Repetitions per datapath.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the first repetition.")
@click.option("--datapaths", default="nfqueue,ebpf,kernel,dummynet", show_default=True,
              help="Candidates, comma-separated; the first that runs is the reference.")
@click.option("--rate", help="Bottleneck rate for these runs, e.g. 10mbit (default: the testbed's).")
@click.option("--rtt", help="Base RTT for these runs, e.g. 80ms (default: the testbed's).")
@click.option("--buffer", help="Buffer for these runs, e.g. 1.5bdp or 200 (default: the testbed's).")
@click.option("--testbed", "name", help="Testbed name (default: the only one up).")
@click.option("--results", "results_root", type=click.Path(file_okay=False), default="results",
              show_default=True)
@click.option("--resume", type=click.Path(exists=True, file_okay=False),
              help="Finish a crosscheck directory: run only its points not yet complete.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def crosscheck(policy: str, policy_args: tuple[str, ...], scenario_file: str | None, duration: float,
               repeat: int, seed: int, datapaths: str, rate: str | None, rtt: str | None,
               buffer: str | None, name: str | None, results_root: str, resume: str | None,
               as_json: bool) -> None:
    """Run one scenario and policy on every datapath that can run it here, REPEAT times each;
    print utilisation, per-class delay, mark/drop rates, the L4S/classic rate ratio and the
    per-class sojourn distances (W1, KS) side by side, with a verdict against the stated
    tolerances. Writes crosscheck.json and crosscheck.csv; exits 1 if the datapaths differ."""
    from orchestrator import providers
    from orchestrator.analysis.crosscheck import lines
    from orchestrator.commands.view import RunProgress
    from orchestrator.experiment import crosscheck as xc
    from orchestrator.experiment.run import RunConfig

    tb = providers.load(name)
    if resume:
        directory = Path(resume)
    else:
        if repeat < 1:
            raise UserError(f"--repeat: expected 1 or more, got {repeat}")
        scenario = load_scenario(scenario_file, tb)
        args = {**scenario.policy_args, **parse_policy_args(policy_args)}
        config = RunConfig(policy=policy, policy_args=args, duration_s=duration, seed=seed)
        link = {k: v for k, v in (("rate", rate), ("rtt", rtt), ("buffer", buffer)) if v}
        names = tuple(d.strip() for d in datapaths.split(",") if d.strip())
        directory = xc.create(tb, Path(results_root), scenario, config, repeat, link, names)
    with RunProgress() as progress:
        result = xc.execute(tb, directory, progress.update)
    if as_json:
        click.echo(json.dumps(json.loads((directory / "crosscheck.json").read_text()), indent=1))
    else:
        click.echo("\n".join(lines(result, result["skipped"])))
        click.echo(f"crosscheck: {directory} (crosscheck.json, crosscheck.csv)")
    if result["verdict"] == "disagree":
        sys.exit(1)


COMMANDS = [crosscheck]

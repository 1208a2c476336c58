"""`testbed trace generate` and `testbed trace show`: capacity traces for dynamic links."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.errors import UserError


@click.group()
def trace() -> None:
    """Make and inspect capacity traces (Mahimahi format) for trace-driven bottlenecks."""


@trace.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Trace file to write.")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--duration", default="30s", show_default=True, help="Length (the trace's period).")
@click.option("--levels", default="2,6,12,24,48", show_default=True,
              help="Mean rates of the Markov chain's levels, Mbit/s, comma-separated.")
@click.option("--stay", default=0.9, show_default=True, type=float,
              help="Probability to keep the level at each step.")
@click.option("--step", "step_ms", default=100, show_default=True, type=int, help="Step length, ms.")
@click.option("--sigma", default=0.3, show_default=True, type=float,
              help="Log-normal spread of the rate within a step.")
def generate(out: str, seed: int, duration: str, levels: str, stay: float, step_ms: int,
             sigma: float) -> None:
    """Generate a cellular-like trace (orchestrator/bottleneck/tracegen.py documents the model)."""
    from orchestrator.bottleneck import tracegen
    from orchestrator.spec import units
    from orchestrator.spec.schedule import ScheduleError

    try:
        duration_s = units.seconds(duration)
    except ValueError as e:
        raise UserError(f"--duration: {e}") from None
    try:
        rates = tuple(float(x) for x in levels.split(","))
    except ValueError:
        raise UserError(f"--levels: expected rates in Mbit/s like '2,6,12', got {levels!r}") from None
    model = tracegen.CellularModel(levels=rates, stay=stay, step_ms=step_ms, sigma=sigma)
    try:
        ms = tracegen.generate(model, duration_s, seed)
    except ScheduleError as e:
        raise UserError(f"--{e.key.replace('_ms', '')}: {e.message}") from None
    path = tracegen.write(out, ms, model, duration_s, seed)
    click.echo(f"{path}: {len(ms)} delivery opportunities over {duration_s:g} s, mean "
               f"{len(ms) * tracegen.PACKET_BITS / duration_s / 1e6:.2f} Mbit/s (seed {seed})")


@trace.command()
@click.argument("file", type=click.Path(dir_okay=False))
def show(file: str) -> None:
    """Summarise a trace: period, mean rate, and the rate's spread over 1 s windows."""
    import numpy as np

    from orchestrator.spec import schedule as sm

    try:
        loaded = sm.load_trace(Path(file))
    except sm.ScheduleError as e:
        raise UserError(str(e)) from None
    if isinstance(loaded, sm.MahimahiTrace):
        period = loaded.period_ms / 1e3
        per_s = np.array([r for _, r in loaded.rate_bins(period, 1.0)]) / 1e6
        p5, p50, p95 = np.percentile(per_s, [5, 50, 95])
        click.echo(f"{file}: Mahimahi trace, period {period:g} s, {loaded.per_period} opportunities, "
                   f"mean {loaded.mean_rate_bps / 1e6:.2f} Mbit/s; per second p5 {p5:.1f}, "
                   f"p50 {p50:.1f}, p95 {p95:.1f} Mbit/s")
    else:
        steps = ", ".join(f"{s.at:g}s {s.value / 1e6:g}mbit" for s in loaded.steps)
        click.echo(f"{file}: rate steps {steps}")


COMMANDS = [trace]

"""`testbed regress`: run a suite, compare it with a baseline, fail on drift."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from orchestrator import strictjson
from orchestrator.errors import UserError
from orchestrator.spec.scenario import MAX_DURATION_S


@click.command()
@click.argument("suite_file", type=click.Path(dir_okay=False))
@click.option("--baseline", "baseline_file", required=True, type=click.Path(dir_okay=False),
              help="Baseline JSON to compare with (or to write, with --update-baseline).")
@click.option("--update-baseline", is_flag=True, help="Write this run's metrics as the new baseline.")
@click.option("--testbed", "name", help="Testbed name (default: the only one up).")
@click.option("--results", "results_root", type=click.Path(file_okay=False), default="results",
              show_default=True, help="Where the suite's runs and comparison table go.")
@click.option("--duration", type=float,
              help="Seconds every case lasts instead of the suite's (a quick check: compare only "
                   "with a baseline made with the same --duration).")
@click.option("--current", "current_file", type=click.Path(exists=True, dir_okay=False),
              help="Compare the current.json of an earlier regress instead of running the suite.")
def regress(suite_file: str, baseline_file: str, update_baseline: bool, name: str | None,
            results_root: str, duration: float | None, current_file: str | None) -> None:
    """Run the scenarios x policies of SUITE_FILE, compare each metric of summary.json with
    the baseline, write a comparison table (CSV, and printed), and exit 1 if any metric
    drifted past its tolerance (or a run failed)."""
    from orchestrator.experiment import regress as rg

    suite = rg.load_suite(suite_file)
    if duration is not None:
        if not 0 < duration <= MAX_DURATION_S:  # also refuses nan and inf
            raise UserError(f"--duration: expected seconds from 0 to {MAX_DURATION_S:g}, "
                            f"got {duration:g}")
        suite = rg.with_duration(suite, f"{duration:g}s")
    baseline_path = Path(baseline_file)
    baseline = {} if update_baseline else rg.read_baseline(baseline_path, suite)  # before any run
    out_dir = Path(results_root) / f"regress-{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    if current_file:
        current = json.loads(Path(current_file).read_text())
        testbed = {}
    else:
        current, testbed = _run(suite, name, out_dir)
    (out_dir / "current.json").write_text(strictjson.dumps(current, indent=1, sort_keys=True) + "\n")
    if update_baseline:
        rg.write_baseline(baseline_path, suite, current, testbed)
        click.echo(f"baseline written: {baseline_path} ({len(current)} runs)")
        return
    rows = rg.compare(current, baseline, rg.tolerances(suite))
    rg.write_csv(rows, out_dir / "comparison.csv")
    click.echo(rg.format_table(rows))
    click.echo(f"comparison: {out_dir / 'comparison.csv'}")
    bad = [r for r in rows if r.status in rg.FAILING]
    if bad:
        click.echo(f"regression: {len(bad)} of {len(rows)} checks failed "
                   f"({', '.join(sorted({r.status for r in bad}))})", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(rows)} checks within tolerance")


def _run(suite: object, name: str | None, out_dir: Path) -> tuple[dict, dict]:
    from orchestrator import providers
    from orchestrator.experiment import regress as rg

    tb = providers.load(name)
    bn = tb.bottleneck
    testbed = {"name": tb.name, "provider": tb.provider, "rate_mbps": bn.rate_bps / 1e6,
               "rtt_ms": bn.rtt_s * 1e3, "buffer_pkts": bn.buffer_pkts}
    try:
        current = rg.run_suite(tb, suite, out_dir,
                               on_run=lambda key, run_dir, status: click.echo(f"{key}: {status} ({run_dir})"))
    except KeyboardInterrupt:
        # said here, then re-raised so the exit code stays 130 (Ctrl-C) or 143 (SIGTERM)
        click.echo(f"interrupted; the runs so far are in {out_dir}", err=True)
        raise
    return current, testbed


COMMANDS = [regress]

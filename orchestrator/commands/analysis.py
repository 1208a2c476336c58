"""`testbed analyze | report | compare | export-flent`: thin wrappers over orchestrator.analysis."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.errors import UserError

RESULTS = Path("results")


def run_path(arg: str) -> Path:
    """A run directory given as a path or as a run id under ./results/."""
    for candidate in (Path(arg), RESULTS / arg):
        if candidate.is_dir():
            return candidate
    raise UserError(f"{arg}: no such run directory (give a path or a run id under {RESULTS}/)")


@click.command()
@click.argument("run")
@click.option("--bin", "bin_s", default=0.1, show_default=True, help="Time-series bin width in seconds.")
def analyze(run: str, bin_s: float) -> None:
    """Rerun the analysis of RUN: summary.json, tables/, plots/, report.html."""
    from orchestrator.analysis import analyze as do_analyze
    from orchestrator.analysis import compare
    from orchestrator.experiment.results import mark_if_orphan

    if not 0 < bin_s <= 60:  # also refuses nan and inf
        raise UserError(f"--bin: expected seconds from 0 to 60, got {bin_s:g}")
    path = run_path(run)
    # only a run folder: analyze writes summary, tables, plots and a report into it
    if not (path / "manifest.json").is_file():
        raise UserError(f"{path}: not a run folder (it has no manifest.json); nothing written")
    if mark_if_orphan(path / "manifest.json"):
        click.echo(f"{path}: its process died while running; marked aborted in manifest.json",
                   err=True)
    do_analyze(path, bin_s=bin_s)
    click.echo(compare.render(compare.compare([path])), nl=False)
    click.echo(f"summary: {path / 'summary.json'}\nreport:  {path / 'report.html'}")


@click.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False), help="HTML file (default: report.html in the run, "
              "or ./report.html for several runs).")
def report(runs: tuple[str, ...], out: str | None) -> None:
    """Write one self-contained HTML page for one or more RUNS."""
    from orchestrator.analysis import report as reportmod

    paths = [run_path(r) for r in runs]
    target = Path(out) if out else (paths[0] / "report.html" if len(paths) == 1 else Path("report.html"))
    click.echo(f"report: {reportmod.report(paths, target)}")


@click.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--plot", type=click.Path(dir_okay=False), help="Also write a comparison plot (PNG).")
def compare(runs: tuple[str, ...], plot: str | None) -> None:
    """Print the summary figures of several RUNS side by side."""
    from orchestrator.analysis import compare as comparemod

    paths = [run_path(r) for r in runs]
    frame = comparemod.compare(paths)
    click.echo(comparemod.render(frame), nl=False)
    if plot:
        click.echo(f"plot: {comparemod.plot(paths, plot, frame)}")


@click.command("export-flent")
@click.argument("run")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Output file (default: <run>/<run-id>.flent.gz).")
def export_flent(run: str, out: str | None) -> None:
    """Export RUN to Flent's data format (.flent.gz) for Flent's plots."""
    from orchestrator.analysis import flent

    click.echo(f"flent data: {flent.export(run_path(run), out)}")


COMMANDS = [analyze, report, compare, export_flent]

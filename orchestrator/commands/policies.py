"""`testbed policies`: what can run, with which parameters, on which datapaths."""

from __future__ import annotations

import json

import click


@click.command(name="policies")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def policies_cmd(as_json: bool) -> None:
    """List policies, their parameters with defaults, and the datapaths that run them."""
    import policies

    info = policies.describe()
    if as_json:
        click.echo(json.dumps(info, indent=1, default=str))
        return
    for p in info:
        click.echo(f"{p['name']}  [{', '.join(p.get('datapaths', []))}]"
                   + ("  (per packet)" if p.get("per_packet") else ""))
        click.echo(f"    {p.get('doc', '')}")
        for param in p.get("params", []):
            click.echo(f"      {param['name']:<20} {str(param['default']):<12} {param['help']}")
        if p.get("effective_gains"):
            click.echo(f"    effective gains: {_gains(p['effective_gains'])}")
        for datapath, note in p.get("datapath_notes", {}).items():
            click.echo(f"    on {datapath}: {note}")


def _gains(g: dict) -> str:
    if g.get("arithmetic") != "kernel":
        return f"alpha {g['alpha_hz']:f} beta {g['beta_hz']:f} (Hz, float arithmetic)"
    # tc's own print first (what a reviewer sees in `tc qdisc show`), then what the integer
    # controller applies: tc's print is a lossy round trip of the kernel's integers
    return (f"alpha {g['tc_alpha']} beta {g['tc_beta']} as tc prints them; applied: "
            f"alpha {g['alpha_hz']:.6f} Hz beta {g['beta_hz']:.6f} Hz "
            f"({g['alpha_int']}/{g['beta_int']} per 64 ns from {g['alpha256']}/{g['beta256']} in 1/256 Hz)")


COMMANDS = [policies_cmd]

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


COMMANDS = [policies_cmd]

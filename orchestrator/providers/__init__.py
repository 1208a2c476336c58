"""Providers build testbeds: `netns` on this machine, `ssh` on existing machines."""

from __future__ import annotations

from orchestrator.errors import UserError


def provider_class(name: str) -> type:
    if name == "netns":
        from orchestrator.providers.netns import NetnsTestbed

        return NetnsTestbed
    if name == "ssh":
        from orchestrator.providers.ssh.transport import SshTestbed  # type: ignore[import-not-found]

        return SshTestbed
    raise UserError(f"unknown provider {name!r} (expected netns or ssh)")

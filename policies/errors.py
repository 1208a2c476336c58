"""Errors of the policies package. `policies/` stands alone (it imports nothing from the
orchestrator), so it has its own; the orchestrator maps both to its user errors."""


class PolicyError(Exception):
    """Bad input or an unmet precondition a user can fix (a missing checkpoint, a bad pool);
    the message says what and where."""


class ParamError(ValueError):
    """A policy parameter had a bad name or value; the message names the key."""

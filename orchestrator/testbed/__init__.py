"""A testbed that is up, whatever provider built it: the base class, its topology and state."""

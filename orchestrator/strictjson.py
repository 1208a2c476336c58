"""Strict JSON for every file the tool writes: no NaN or Infinity (Python's json writes them
by default, but they are not JSON: Node's JSON.parse and jq reject the file). A non-finite
number becomes null (e.g. an nfqueue buffer without a byte limit: "limit_bytes": null).
Stdlib only: the router-side daemons use it too."""

from __future__ import annotations

import json
import math
from typing import Any


def clean(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps of clean(value); allow_nan=False so anything missed fails here, loudly."""
    default = kwargs.pop("default", None)
    if default is not None:
        # objects json cannot write go through `default` first, then are cleaned as well
        value = json.loads(json.dumps(value, default=default))
    return json.dumps(clean(value), allow_nan=False, **kwargs)


def loads(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, as other tools would."""
    def refuse(name: str) -> Any:
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)

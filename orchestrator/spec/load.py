"""The one path from a YAML file to a validated pydantic model: every file the tool reads
(testbed, scenario, matrix, suite) fails the same way, with one SpecError naming the file,
the key path and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import SpecError

M = TypeVar("M", bound=BaseModel)


def key_path(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as the user wrote it: `links[2].bottleneck.rate`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[", "str", "int")):
            out += ("." if out else "") + str(part)
    return out


def message(err: dict[str, Any]) -> str:
    """pydantic's error message in the words of this tool."""
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "extra_forbidden":
        return "unknown key"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data; SpecError (with the line) when it is not YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise SpecError(source, where, f"not valid YAML: {getattr(e, 'problem', e)}") from None


def read_yaml(path: str | Path) -> Any:
    """The data of a YAML file; SpecError when it is missing, unreadable or not YAML."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), "", "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), "", f"cannot read the file: {e}") from None
    return parse_yaml(text, str(path))


def validate(model: type[M], data: Any, source: str, prefix: str = "") -> M:
    """data -> model, or the first validation error as a SpecError at `prefix` + key path."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise SpecError(source, prefix + key_path(err["loc"]), message(err)) from None


def load_model(path: str | Path, model: type[M], *, section: str | None = None,
               source_key: str | None = None, what: str = "a mapping") -> M:
    """Read `path` and validate it as `model`. `section`: a key whose value is the model when
    present (a testbed file's `scenario:`); `source_key`: a field the file's path is put in
    (models that name their own file in later errors)."""
    source = str(path)
    data = read_yaml(path)
    prefix = ""
    if section is not None and isinstance(data, dict) and section in data:
        data, prefix = data[section], f"{section}."
    if not isinstance(data, dict):
        raise SpecError(source, prefix.rstrip("."), f"expected {what}")
    if source_key is not None:
        data = {**data, source_key: source}
    return validate(model, data, source, prefix)

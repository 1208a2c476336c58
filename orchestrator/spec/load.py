"""The one path from a YAML file to a validated pydantic model: every file the tool reads
(testbed, scenario, matrix, suite) fails the same way, with one SpecError naming the file,
the key path and what was expected."""

from __future__ import annotations

import math
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


# Deeper than any real file; a 20,000-deep list would exhaust Python's stack in the parser.
MAX_DEPTH = 50


class _StrictLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error (else the last silently
    wins) and nesting stops at MAX_DEPTH."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.constructor.ConstructorError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def non_finite(data: Any, path: str = "") -> str | None:
    """The key path of the first NaN or infinity in `data` (YAML's .nan, .inf), else None."""
    todo: list[tuple[Any, str]] = [(data, path)]
    while todo:
        value, where = todo.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return where
        if isinstance(value, dict):
            todo.extend((v, f"{where}.{k}" if where else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((v, f"{where}[{i}]") for i, v in enumerate(value))
    return None


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data; SpecError (with the line) when it is not YAML, has a duplicated
    key, is nested too deep or holds a non-finite number."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise SpecError(source, where, f"not valid YAML: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise SpecError(source, "", f"not valid YAML: nested deeper than {MAX_DEPTH} levels") from None
    bad = non_finite(data)
    if bad is not None:
        raise SpecError(source, bad, "expected a finite number, got NaN or infinity")
    return data


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

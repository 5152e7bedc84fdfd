"""The checks every metadata file and config passes before anything uses it.

Files are read only when they are regular files of bounded size (a FIFO would hang, a link to
/dev/zero would fill memory) holding UTF-8; JSON and YAML are parsed with bounded depth and, for
YAML, a bounded size once aliases are expanded (a few hundred bytes of aliases can expand to
gigabytes) and the safe loader only. Schemas are strict (no type coercion, no unknown fields, no
NaN/inf), and every problem becomes one line that names the file and the field:
`meta.json: state_std.3: Input should be ...`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dtmerge.errors import DtmergeError

M = TypeVar("M", bound=BaseModel)


class Schema(BaseModel):
    """Base of every metadata schema: strict types, unknown fields refused, finite numbers only."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def one_line(error: ValidationError) -> str:
    """The first problem of a ValidationError as `field.path: message` (plus how many more)."""
    errors = error.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    message = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {message}{more}"


MAX_TEXT_BYTES = 64 << 20  # far above any metadata file or config dtmerge writes
MAX_DEPTH = 64  # nesting of a JSON or YAML document
MAX_YAML_NODES = 100_000  # a config's values, aliases expanded


def read_text(file, error: type[Exception] = DtmergeError, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of regular file `file`, refused past `limit` bytes."""
    file = Path(file)
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, and is refused below
    except FileNotFoundError:
        raise error(f"{file}: file not found") from None
    except OSError as e:
        raise error(f"{file}: cannot read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{file}: not a regular file")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"{file}: cannot read ({e.strerror})") from None
    if len(data) > limit:
        raise error(f"{file}: larger than {limit >> 20} MiB, too large for a metadata file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{file}: not UTF-8 text (at byte {e.start})") from None


def _depth(value) -> int:
    """How deeply lists and objects nest in a parsed JSON value."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d + 1)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_json(text: str, where, error: type[Exception] = DtmergeError):
    """A JSON document from `text` (read from `where`), nested at most MAX_DEPTH deep."""
    try:
        value = json.loads(text)
    except ValueError as e:  # JSONDecodeError, or an integer literal too long to convert
        raise error(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        value = None
    if value is None and text.strip() != "null" or _depth(value) > MAX_DEPTH:
        raise error(f"{where}: JSON nested more than {MAX_DEPTH} deep")
    return value


def read_json_file(file, error: type[Exception] = DtmergeError):
    """The JSON document in `file`, read and parsed within the limits above."""
    return parse_json(read_text(file, error), file, error)


class _Loader(yaml.SafeLoader):
    """The safe loader, reading `5e-1` and `1e30` as the numbers YAML 1.2 says they are (YAML 1.1,
    PyYAML's default, reads a float without a dot as a string)."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT,
                              list("-+0123456789."))


def parse_yaml(text: str, where, error: type[Exception] = DtmergeError):
    """A YAML document from `text` (read from `where`) with the safe loader, refused when it nests
    more than MAX_DEPTH deep or expands to more than MAX_YAML_NODES values."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _yaml_size(node, 0, {}, where, error)
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise error(f"{where}: not a YAML document dtmerge can read ({one_line_yaml(e)})") from None
    except RecursionError:
        raise error(f"{where}: YAML nested more than {MAX_DEPTH} deep") from None
    finally:
        loader.dispose()


def one_line_yaml(error: Exception) -> str:
    problem = getattr(error, "problem", None) or type(error).__name__
    mark = getattr(error, "problem_mark", None)
    return f"{problem}, line {mark.line + 1}" if mark is not None else problem


def _yaml_size(node, depth: int, sizes: dict, where, error) -> tuple[int, int]:
    """(values, height) under `node` with every alias expanded (each node counted once per use);
    refused past MAX_YAML_NODES values or MAX_DEPTH levels, aliases followed."""
    if depth > MAX_DEPTH:
        raise error(f"{where}: YAML nested more than {MAX_DEPTH} deep")
    if id(node) not in sizes:
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        below = [_yaml_size(child, depth + 1, sizes, where, error) for child in children]
        sizes[id(node)] = (1 + sum(n for n, _ in below), 1 + max((h for _, h in below), default=0))
        if sizes[id(node)][0] > MAX_YAML_NODES:
            raise error(f"{where}: YAML expands to more than {MAX_YAML_NODES:,} values (aliases expanded)")
    if depth + sizes[id(node)][1] > MAX_DEPTH + 1:
        raise error(f"{where}: YAML nested more than {MAX_DEPTH} deep")
    return sizes[id(node)]


def read_validated(file, schema: type[M], error: type[Exception] = DtmergeError) -> M:
    """`file` parsed and validated as `schema`; a missing, unreadable or invalid file raises `error`.

    A schema with a `format` field is checked for it first, so a file of another kind or version
    gets a message saying so rather than a list of field errors.
    """
    file = Path(file)
    text = read_text(file, error)
    raw = parse_json(text, file, error)
    if not isinstance(raw, dict):
        raise error(f"{file}: expected a JSON object, got {type(raw).__name__}")
    expected = schema.model_fields.get("format")
    if expected is not None and expected.default is not None and raw.get("format") != expected.default:
        raise error(f"{file}: unknown format {raw.get('format')!r}; this dtmerge reads {expected.default!r}")
    try:
        return schema.model_validate_json(text, strict=True)
    except ValidationError as e:
        raise error(f"{file}: {one_line(e)}") from None


def read_yaml_mapping(file, what: str = "config", error: type[Exception] = DtmergeError) -> dict:
    """A YAML config file's top-level mapping (empty file: {}); anything else raises `error`."""
    file = Path(file)
    data = parse_yaml(read_text(file, error), file, error) or {}
    if not isinstance(data, dict):
        raise error(f"{file}: a {what} must be a mapping of option: value")
    return data

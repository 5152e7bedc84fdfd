"""Read a JSON metadata file and check it against a pydantic schema before anything uses it.

Schemas are strict (no type coercion, no unknown fields, no NaN/inf), and every problem becomes
one line that names the file and the field: `meta.json: state_std.3: Input should be ...`.
"""

from __future__ import annotations

import json
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


def read_validated(file, schema: type[M], error: type[Exception] = DtmergeError) -> M:
    """`file` parsed and validated as `schema`; a missing, unreadable or invalid file raises `error`.

    A schema with a `format` field is checked for it first, so a file of another kind or version
    gets a message saying so rather than a list of field errors.
    """
    file = Path(file)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise error(f"{file}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{file}: cannot read ({type(e).__name__})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{file}: not valid JSON ({e})") from None
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
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise error(f"{file}: cannot read YAML config ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise error(f"{file}: a {what} must be a mapping of option: value")
    return data

"""YAML config files with command-line flags on top, both validated by the same pydantic model.

`pydantic_options(Model)` turns a model's fields into click options (help text from the field
descriptions), so every option is declared once; `build_config` layers defaults < YAML < flags.
"""

from __future__ import annotations

from typing import Literal, get_args, get_origin

import click
from pydantic import BaseModel, ValidationError

from dtmerge.validate import one_line, read_yaml_mapping


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _click_type(annotation):
    """(click type, multiple) for `int`, `str | None`, `list[float]`, `list[str] | None`, `Literal[...]`
    (a choice, so `--help` lists the values), `list[Literal[...]]`."""
    if get_origin(annotation) is list:
        return _scalar(get_args(annotation)[0]), True
    if get_origin(annotation) is Literal:
        return _scalar(annotation), False
    args = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    base = args[0]
    if get_origin(base) is list:
        return _scalar(get_args(base)[0]), True
    return _scalar(base), False


def _scalar(annotation):
    if get_origin(annotation) is Literal:
        return click.Choice([str(v) for v in get_args(annotation)])
    return annotation if annotation in (int, float, str, bool) else str


def pydantic_options(model: type[BaseModel], nested: tuple[str, ...] = (), skip: tuple[str, ...] = ()):
    """Decorator adding one `--flag` per field of `model` (and of the nested models named)."""
    fields = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        if name in nested:
            fields += list(field.annotation.model_fields.items())
        else:
            fields.append((name, field))

    def decorate(fn):
        for name, field in reversed(fields):
            typ, multiple = _click_type(field.annotation)
            value = None if field.is_required() else field.get_default(call_default_factory=True)
            default = "" if value is None else f" [default: {value}]"
            help_text = (field.description or "") + default
            if typ is bool:
                fn = click.option(f"{_flag(name)}/--no-{name.replace('_', '-')}", name, default=None,
                                  help=help_text)(fn)
            else:
                fn = click.option(_flag(name), name, type=typ, multiple=multiple, default=None,
                                  help=help_text)(fn)
        return fn

    return decorate


def build_config(model: type[BaseModel], config_file: str | None, flags: dict,
                 nested: tuple[str, ...] = ()) -> BaseModel:
    """Defaults < YAML file < flags that were given; errors name the file and the field."""
    data = read_yaml_mapping(config_file, "config file", click.UsageError) if config_file else {}
    for name in nested:
        data.setdefault(name, {})
    for key, value in flags.items():
        if value is None or value == ():
            continue
        target = next((data[n] for n in nested if key in model.model_fields[n].annotation.model_fields), data)
        target[key] = list(value) if isinstance(value, tuple) else value
    try:
        return model(**data)
    except ValidationError as e:
        where = f"{config_file} (and flags)" if config_file else "flags"
        raise click.UsageError(f"invalid configuration in {where}: {one_line(e)}") from None

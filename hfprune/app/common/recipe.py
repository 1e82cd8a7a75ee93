"""Recipes: nested dicts (parsed YAML, or flags) -> an application's validated options object.

Generic over the options class (see `options.py`): sections are the fields whose type is a dataclass, the other
fields are top-level scalars. Unknown keys are named with their section, and a key that belongs to another
application's options says so (`prune.heads does not apply to task image-classification`). Dotted `key=value`
overrides (`--set`) are parsed as YAML scalars.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import fields
from pathlib import Path

import yaml


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and the file."""


def _check_type(key: str, value, type_name: str):
    optional = type_name.endswith("| None")
    base = type_name.replace("| None", "").strip()
    if value is None:
        if optional:
            return None
        raise RecipeError(f"{key} must not be empty (expected {base})")
    if base == "bool":
        if isinstance(value, bool):
            return value
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base == "dict":
        if isinstance(value, dict):
            return value
    elif base == "list":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]
        if isinstance(value, list):
            return value
    raise RecipeError(f"{key} must be {'a ' + base if base != 'int' else 'an int'}, got {value!r}")


def sections(options_cls) -> dict[str, type]:
    """`{section name: section dataclass}` of an application's options class, in declaration order."""
    hints = typing.get_type_hints(options_cls)
    return {f.name: hints[f.name] for f in fields(options_cls) if dataclasses.is_dataclass(hints[f.name])}


def top_level(options_cls) -> dict[str, dataclasses.Field]:
    """The options' top-level scalar fields (`seed`, `description`)."""
    names = sections(options_cls)
    return {f.name: f for f in fields(options_cls) if f.name not in names}


def has_key(options_cls, dotted: str) -> bool:
    section, _, key = dotted.partition(".")
    if not key:
        return section in top_level(options_cls)
    cls = sections(options_cls).get(section)
    return cls is not None and key in {f.name for f in fields(cls)}


def _foreign(dotted: str, task: str, others: dict[str, type]) -> str:
    """`" does not apply to task T (an option of ...)"` when another application has the key, else ''."""
    owners = [title for title, cls in others.items() if has_key(cls, dotted)]
    return f"{dotted} does not apply to task {task} (an option of {' and '.join(owners)})" if owners else ""


def _section(name: str, cls, values, source: str, task: str, others: dict):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise RecipeError(f"{source}: section {name!r} must be a mapping of keys to values, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if key not in known:
            raise RecipeError(f"{source}: " + (_foreign(f"{name}.{key}", task, others) or
                                               f"unknown key {name}.{key!s} (known keys of {name}: "
                                               f"{', '.join(known)})"))
    kwargs = {k: _check_type(f"{source}: {name}.{k}", v, known[k].type) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise RecipeError(f"{source}: {name}.{err}") from None


def options_from_dict(options_cls, data: dict, source: str = "recipe", task: str = "",
                      others: dict[str, type] | None = None):
    """Validate a nested dict (a parsed YAML recipe) into `options_cls`.

    Args:
        options_cls (`type`): an application's options dataclass (sections + top-level scalars).
        data (`dict`): `{section: {key: value}, seed: ...}`.
        source (`str`): named first in every message (the file, or "command line").
        task (`str`): the recipe's task, named when a key belongs to another application.
        others (`dict[str, type]`, *optional*): the other applications' options classes by title, so that their
            keys are refused as "does not apply to task ..." instead of "unknown key".

    Raises:
        RecipeError: an unknown key (named with its section), a wrong type or an out-of-range value.
    """
    others = others or {}
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
    parts, top = sections(options_cls), top_level(options_cls)
    for key in data:
        if key not in parts and key not in top:
            raise RecipeError(f"{source}: " + (_foreign(str(key), task, others) or
                                               f"unknown key {key!s} (known: {', '.join([*parts, *top])})"))
    built = {name: _section(name, cls, data.get(name), source, task, others) for name, cls in parts.items()}
    extra = {k: _check_type(f"{source}: {k}", data[k], top[k].type) for k in top if k in data}
    try:
        return options_cls(**built, **extra)
    except ValueError as err:
        raise RecipeError(f"{source}: {err}") from None


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Return a copy of `data` with `section.key=value` overrides applied (values parsed as YAML scalars/lists).

    Example:
        ```python
        >>> apply_overrides({"prune": {"heads": 0.5}}, ["prune.heads=0.3", "finetune.steps=10"])
        {'prune': {'heads': 0.3}, 'finetune': {'steps': 10}}
        ```
    """
    data = copy.deepcopy(data or {})
    for item in overrides or []:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. prune.heads=0.5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        if len(parts) > 2:
            raise RecipeError(f"--set {item!r}: keys have at most two parts (section.key)")
        if len(parts) == 1:
            data[key] = value
            continue
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise RecipeError(f"--set {item!r}: {parts[0]} is not a section")
        section[parts[1]] = value
    return data


def read_recipe(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A YAML recipe read with `yaml.safe_load`, `--set` overrides applied, not yet validated (see
    `hfprune.app.apps.load_recipe`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return apply_overrides(data or {}, overrides)


def options_field(options_cls, dotted: str) -> dataclasses.Field:
    """The field of `section.key` (or of a top-level key) in `options_cls`.

    Raises:
        KeyError: the options have no such key.
    """
    section, _, key = dotted.partition(".")
    if not key:
        if section in top_level(options_cls):
            return top_level(options_cls)[section]
        raise KeyError(dotted)
    cls = sections(options_cls).get(section)
    for f in fields(cls) if cls is not None else ():
        if f.name == key:
            return f
    raise KeyError(dotted)

"""YAML recipes -> validated `Recipe` objects (safe loader, unknown keys named, dotted `key=value` overrides)."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

import yaml

from .config import SECTIONS, Recipe

_TOP_LEVEL = {"seed", "description"}


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


def _section(name: str, cls, values, source: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise RecipeError(f"{source}: section {name!r} must be a mapping of keys to values, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if key not in known:
            raise RecipeError(f"{source}: unknown key {name}.{key!s} (known keys of {name}: {', '.join(known)})")
    kwargs = {k: _check_type(f"{source}: {name}.{k}", v, known[k].type) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise RecipeError(f"{source}: {name}.{err}") from None


def recipe_from_dict(data: dict, source: str = "recipe") -> Recipe:
    """Validate a nested dict (a parsed YAML recipe) into a `Recipe`.

    Raises:
        RecipeError: an unknown key (named with its section), a wrong type or an out-of-range value.
    """
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
    for key in data:
        if key not in SECTIONS and key not in _TOP_LEVEL:
            raise RecipeError(f"{source}: unknown key {key!s} (known: {', '.join([*SECTIONS, *sorted(_TOP_LEVEL)])})")
    sections = {name: _section(name, cls, data.get(name), source) for name, cls in SECTIONS.items()}
    top = {f.name: f for f in fields(Recipe)}
    extra = {k: _check_type(f"{source}: {k}", data[k], top[k].type) for k in _TOP_LEVEL if k in data}
    try:
        return Recipe(**sections, **extra)
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


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe with `yaml.safe_load`, apply `--set` overrides and validate.

    Args:
        path (`str` or `Path`): the YAML file.
        overrides (`list[str]`, *optional*): `section.key=value` strings, applied in order.

    Example:
        ```python
        >>> recipe = load_recipe("recipes/sst2.yaml", ["data.data_dir=../shared/data/glue", "finetune.steps=100"])
        ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return recipe_from_dict(apply_overrides(data or {}, overrides), source=str(path))


def recipe_to_dict(recipe: Recipe) -> dict:
    """The recipe as plain data (for results.json and for writing a recipe back out)."""
    from dataclasses import asdict

    return asdict(recipe)


def field_help(dotted: str) -> str:
    """The help text of `section.key` (used by the command line so that both spellings say the same)."""
    section, _, key = dotted.partition(".")
    cls = SECTIONS[section] if key else Recipe
    name = key or section
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(dotted)

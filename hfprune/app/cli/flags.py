"""The `hfprune prune` flags, read from the applications' options classes (one source of truth).

Every field with a `flag` in its metadata is a flag; one flag may be a field of several applications (`--heads` of
GLUE and causal-lm) and of several sections of one (`--batch-size` sets `finetune.batch_size` and
`recover.batch_size`). In `--help` the flags are grouped by the tasks they apply to, and a flag given with a task
whose options do not have it is refused by name, both derived from the same fields.
"""

from __future__ import annotations

import argparse
from dataclasses import Field, dataclass, field

from ..apps import ALL_TASKS, APPS, App
from ..common.recipe import sections, top_level

_SCALARS = {"int": int, "float": float, "str": str}


@dataclass
class FlagSpec:
    """One command-line flag and the option fields it spells, per application."""

    flag: str
    fields: list[tuple[App, str, Field]] = field(default_factory=list)  # (application, dotted key, field)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def apps(self) -> list[App]:
        return list(dict.fromkeys(app for app, _, _ in self.fields))

    def keys(self, app: App) -> list[str]:
        return [key for owner, key, _ in self.fields if owner is app]

    def to_value(self, app: App, value):
        convert = next(f.metadata["cli"].get("to_value") for owner, _, f in self.fields if owner is app)
        return convert(value) if convert else value


def _flag_fields(app: App):
    """(flag, dotted key, field) of every flagged field of `app`'s options."""
    for name, cls in sections(app.options).items():
        for f in cls.__dataclass_fields__.values():
            if f.metadata.get("flag"):
                yield f.metadata["flag"].format(section=name), f"{name}.{f.name}", f
    for name, f in top_level(app.options).items():
        if f.metadata.get("flag"):
            yield f.metadata["flag"], name, f


def collect_flags() -> dict[str, FlagSpec]:
    """Every flag of every application, in the order the options declare them."""
    specs: dict[str, FlagSpec] = {}
    for app in APPS:
        for flag, key, f in _flag_fields(app):
            specs.setdefault(flag, FlagSpec(flag)).fields.append((app, key, f))
    return specs


def _argparse_kwargs(spec: FlagSpec) -> dict:
    first = spec.fields[0][2]
    cli = first.metadata["cli"]
    kwargs: dict = {"dest": spec.dest, "default": None}
    helps: dict[str, list[str]] = {}  # help text -> the applications that say it
    for app, _, f in spec.fields:
        titles = helps.setdefault(f.metadata["help"], [])
        titles.extend([app.title] if app.title not in titles else [])
    kwargs["help"] = next(iter(helps)) if len(helps) == 1 else \
        "; ".join(f"{', '.join(titles)}: {text}" for text, titles in helps.items())
    if cli.get("action"):
        kwargs["action"] = cli["action"]
        return kwargs
    kwargs["type"] = cli.get("type") or _SCALARS[str(first.type).replace("| None", "").strip()]
    choices = [c for _, _, f in spec.fields for c in _choices(f)]
    if choices:
        kwargs["choices"] = list(dict.fromkeys(choices))
    if cli.get("metavar"):
        kwargs["metavar"] = cli["metavar"]
    required = len(spec.apps) == len(APPS) and all(f.default == "" for _, _, f in spec.fields)
    return {**kwargs, "required": required}


def _choices(f: Field) -> tuple:
    choices = f.metadata["cli"].get("choices") or ()
    return tuple(choices() if callable(choices) else choices)


def _group_title(apps: list[App]) -> str:
    if len(apps) == len(APPS):
        return "every task"
    return "--task " + ", ".join(app.task_label for app in apps)


def add_option_flags(parser: argparse.ArgumentParser) -> dict[str, FlagSpec]:
    """Add every application's flags to `parser`, one argument group per set of tasks; returns the specs."""
    specs = collect_flags()
    groups: dict[tuple, argparse._ArgumentGroup] = {}
    for spec in sorted(specs.values(), key=lambda s: -len(s.apps)):  # "every task" first; stable otherwise
        apps = tuple(spec.apps)
        if apps not in groups:
            groups[apps] = parser.add_argument_group(_group_title(list(apps)))
        kwargs = _argparse_kwargs(spec)
        if spec.flag == "--task":  # each application's own text names only its tasks
            kwargs.update(help=f"what to prune for: {', '.join(ALL_TASKS)}", required=True)
        groups[apps].add_argument(spec.flag, **kwargs)
    return specs


def refuse_foreign(given: list[FlagSpec], app: App, task: str) -> None:
    """Flags that `app`'s options do not have: one sentence per flag, naming it, its tasks and its recipe key, e.g.
    "--text-file applies to --task causal-lm only, not to --task sst2 (key data.text_file)"."""
    foreign = [spec for spec in given if not spec.keys(app)]
    if foreign:
        raise ValueError("; ".join(foreign_message(spec.flag, [a.task_label for a in spec.apps], task,
                                                   spec.keys(spec.apps[0])[0]) for spec in foreign))


def foreign_message(flag: str, owners: list[str], task: str, key: str | None = None) -> str:
    """The one sentence refusing `flag` for `task` (also `hfprune eval`'s)."""
    where = f" (key {key})" if key else ""
    return f"{flag} applies to --task {' or '.join(owners)} only, not to --task {task}{where}"


def recipe_data(args: argparse.Namespace, specs: dict[str, FlagSpec], app: App, task: str) -> dict:
    """The recipe-shaped nested dict of every flag the user gave, for `app` (foreign flags refused first)."""
    given = [spec for spec in specs.values() if getattr(args, spec.dest, None) is not None]
    refuse_foreign(given, app, task)
    data: dict = {}
    for spec in given:
        value = spec.to_value(app, getattr(args, spec.dest))
        for key in spec.keys(app):
            section, _, name = key.rpartition(".")
            (data.setdefault(section, {}) if section else data)[name] = value
    return data

"""Flags shared by several commands; their help text comes from the recipe dataclasses (one source of truth)."""

from __future__ import annotations

import argparse

from ..recipes.loader import field_help


def add_flag(parser: argparse.ArgumentParser, flag: str, key: str, **kwargs) -> None:
    """Add `flag` for the recipe field `key` (`section.name`), with that field's help text."""
    parser.add_argument(flag, dest=key.replace(".", "__"), default=None, help=field_help(key), **kwargs)


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--task", "data.task", required=True, metavar="TASK")
    add_flag(parser, "--data-dir", "data.data_dir", metavar="DIR")
    add_flag(parser, "--train-file", "data.train_file", metavar="FILE")
    add_flag(parser, "--validation-file", "data.validation_file", metavar="FILE")
    add_flag(parser, "--max-eval-samples", "data.max_eval_samples", type=int, metavar="N")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no stage lines")


def flags_to_dict(args: argparse.Namespace) -> dict:
    """The recipe-shaped nested dict of every recipe flag the user gave (`section__name` attributes)."""
    out: dict = {}
    for name, value in vars(args).items():
        if "__" in name and value is not None:
            section, key = name.split("__", 1)
            out.setdefault(section, {})[key] = value
    return out

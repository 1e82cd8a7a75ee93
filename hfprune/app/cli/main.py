"""The `hfprune` command line: `run`, `prune`, `eval`, `info`, `demo` (one module per command).

Bad input (unknown recipe key, out-of-range value, unknown task, missing data split, unusable checkpoint) ends with
one `hfprune <command>: error: ...` line on stderr and exit status 2; set `HFPRUNE_DEBUG=1` for the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from ... import __version__
from . import demo, info, prune, run
from . import eval as evaluate

# One module per command in this package, each with `add_parser(sub)` (which sets `handler`).
_MODULES = {"run": run, "prune": prune, "eval": evaluate, "info": info, "demo": demo}
COMMANDS = tuple(_MODULES)
# Input problems a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ConnectionError, PermissionError,
               KeyError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfprune",
        description="Structured pruning for Hugging Face Transformers: score, prune, recover, evaluate, save.",
    )
    parser.add_argument("--version", action="version", version=f"hfprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _MODULES.values():
        module.add_parser(sub)
    parser.set_defaults(commands=sub.choices)
    return parser


def unknown_flags_message(extra: list[str], command: argparse.ArgumentParser) -> str:
    """argparse's "unrecognized arguments" line, with the closest flag of the command for each mistyped one."""
    known = [s for action in command._actions for s in action.option_strings if s.startswith("--")]
    hints = []
    for token in extra:
        flag = token.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6) if flag.startswith("-") else []
        hints += [f"{flag}: did you mean {close[0]}?"] if close else []
    return f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else "")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hfprune` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = args.commands[args.command]
        command.error(unknown_flags_message(extra, command))
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as err:
        if os.environ.get("HFPRUNE_DEBUG"):
            raise
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"hfprune {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hfprune {args.command}: interrupted (nothing was written to the output folder)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

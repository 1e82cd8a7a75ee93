"""`hfprune demo`: the whole workflow on a built-in tiny model and synthetic task (no download, about a minute)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..demo import __doc__ as demo_doc
    from ..demo import add_arguments

    p = sub.add_parser("demo", help="run the whole workflow on a built-in tiny task (no download)",
                       description=demo_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.output, seed=args.seed, quiet=args.quiet)
    return 0

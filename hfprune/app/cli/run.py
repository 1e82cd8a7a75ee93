"""`hfprune run RECIPE.yaml [--set key=value ...]`: run a YAML recipe (any task: GLUE, image-classification,
causal-lm)."""

from __future__ import annotations

import argparse

from ..apps import load_recipe, print_recipe_summary, run_recipe


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a YAML recipe (recipes/*.yaml)", description=__doc__,
                       epilog="example:\n  hfprune run recipes/sst2.yaml --set data.data_dir=../shared/data/glue "
                              "--set output.dir=out/sst2",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe file (YAML, read with a safe loader)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field with a dotted key, e.g. prune.heads=0.3 (repeatable)")
    p.add_argument("--output", default=None, metavar="OUT", help="shortcut for --set output.dir=OUT")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no stage lines")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    overrides = list(args.set) + ([f"output.dir={args.output}"] if args.output else [])
    recipe = load_recipe(args.recipe, overrides)
    print_recipe_summary(recipe, run_recipe(recipe, quiet=args.quiet))
    return 0

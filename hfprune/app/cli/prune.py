"""`hfprune prune`: prune a model from flags, for any task: a GLUE task (fine-tune, score heads / FFN neurons /
layers, prune, recover, evaluate, save), image-classification (CNN channels) or causal-lm (decoder LLMs: layers,
heads / FFN neurons or weight sparsity on calibration text, perplexity).

The flags spell the same options as a YAML recipe (`hfprune run`); each group below lists the tasks its flags apply
to, and a flag given with another task is an error that names it.
"""

from __future__ import annotations

import argparse

from ..apps import app_for_task, print_recipe_summary, recipe_from_dict, run_recipe
from ..common.recipe import apply_overrides
from .flags import add_option_flags, recipe_data

EXAMPLE = """examples:
  hfprune prune --model ../shared/models/all-MiniLM-L6-v2 --task sst2 --data-dir ../shared/data/glue \\
      --heads 0.5 --criterion michel --finetune-steps 200 --recover-steps 100 --output out/sst2
  hfprune prune --model out/resnet --task image-classification --data-dir digits/ --image-size 32 \\
      --channels 0.5 --channel-criterion bn_scale --recover-steps 100 --output out/resnet-pruned
  hfprune prune --task causal-lm --model DIR --text-file train.txt --layers 6 --layer-method block_influence \\
      --output out/lm
  hfprune prune --task causal-lm --model DIR --text-file train.txt --heads 0.25 --ffn 0.25 --criterion activation \\
      --uniform --distill --recover-steps 40 --output out/lm       # or --lora 16: LoRA, merged
  hfprune prune --task causal-lm --model DIR --text-file train.txt --sparsity 0.5 --criterion wanda --output out/lm
"""


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model for a GLUE task, image-classification or causal-lm",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    specs = add_option_flags(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the task's recipe, e.g. --set recover.learning_rate=1e-4 (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no stage lines")
    p.set_defaults(handler=main, option_flags=specs)


def main(args: argparse.Namespace) -> int:
    app = app_for_task(args.task)
    data = recipe_data(args, args.option_flags, app, args.task)
    recipe = recipe_from_dict(apply_overrides(data, args.set), source="command line")
    results = run_recipe(recipe, quiet=args.quiet)
    print_recipe_summary(recipe, results)
    return 0

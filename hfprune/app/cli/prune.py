"""`hfprune prune`: fine-tune (optional), score, prune, recover (optional), evaluate and save, from flags."""

from __future__ import annotations

import argparse

from ...criteria import criterion_names
from ..recipes.config import CHANNEL_GROUPS, EXPORTS, SCOPES
from .causal_lm import add_prune_flags as add_causal_lm_flags
from .common import add_data_flags, add_flag, add_quiet, flags_to_dict

EXAMPLE = """example:
  hfprune prune --model ../shared/models/all-MiniLM-L6-v2 --task sst2 --data-dir ../shared/data/glue \\
      --heads 0.5 --criterion michel --finetune-steps 200 --recover-steps 100 --output out/sst2
  hfprune prune --model out/resnet --task image-classification --data-dir digits/ --image-size 32 \
      --channels 0.5 --channel-criterion bn_scale --recover-steps 100 --output out/resnet-pruned
  hfprune prune --task causal-lm --model DIR --text-file train.txt --layers 6 --layer-method block_influence \
      --output out/lm
  hfprune prune --task causal-lm --model DIR --text-file train.txt --heads 0.25 --ffn 0.25 --criterion activation \
      --uniform --output out/lm
  hfprune prune --task causal-lm --model DIR --text-file train.txt --sparsity 0.5 --criterion wanda --output out/lm
"""


def fractions(text: str) -> list[float]:
    """`"0.25,0.5"` -> `[0.25, 0.5]` (argparse names this function in its error for a bad value)."""
    return [float(v) for v in text.split(",") if v.strip()]


def budget(text: str) -> dict:
    """`"flops=0.6"` -> `{"flops": 0.6}` (also params=, latency=)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key not in ("flops", "params", "latency"):
        raise argparse.ArgumentTypeError(f"expected flops=F, params=F or latency=F, got {text!r}")
    try:
        return {key: float(value)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}= needs a number, got {value!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model on a GLUE task (flags spell a recipe)",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flag(p, "--model", "model.name_or_path", required=True, metavar="PATH_OR_ID")
    add_data_flags(p)
    add_flag(p, "--max-train-samples", "data.max_train_samples", type=int, metavar="N")
    add_flag(p, "--heads", "prune.heads", type=float, metavar="R")
    add_flag(p, "--ffn", "prune.ffn", type=float, metavar="R")
    add_flag(p, "--layers", "prune.layers", type=int, metavar="N")
    add_flag(p, "--channels", "prune.channels", type=float, metavar="R")
    add_flag(p, "--channel-criterion", "prune.channel_criterion", choices=criterion_names("channels"))
    add_flag(p, "--channel-groups", "prune.channel_groups", choices=CHANNEL_GROUPS)
    add_flag(p, "--compensate", "prune.channel_compensate", action="store_true")
    add_flag(p, "--dataset", "data.dataset", metavar="NAME_OR_DIR")
    add_flag(p, "--image-size", "data.image_size", type=int, metavar="PX")
    # The registry's, as recipes; --task causal-lm also takes the weight criteria (wanda, sparsegpt) with --sparsity.
    add_flag(p, "--criterion", "prune.criterion",
             choices=tuple(dict.fromkeys(criterion_names("heads") + criterion_names("weights"))))
    add_flag(p, "--layer-method", "prune.layer_method", choices=criterion_names("layers"))
    add_flag(p, "--scope", "prune.scope", choices=SCOPES)
    add_flag(p, "--score-batches", "prune.score_batches", type=int, metavar="N")
    p.add_argument("--sweep", type=fractions, default=None,
                   metavar="R,R,...", help="also evaluate the masked model at these head fractions (sweep plot)")
    p.add_argument("--budget", type=budget, default=None, metavar="METRIC=F",
                   help="prune to a fraction of the dense FLOPs / params / latency (flops=0.6) with the "
                        "retraining-free search of Kwon et al. (2022), instead of --heads / --ffn")
    add_flag(p, "--budget-samples", "prune.budget_samples", type=int, metavar="N")
    p.add_argument("--distill", action="store_true",
                   help="recover by distillation from the model before pruning (hfprune.DistillationTrainer; "
                        "alpha / temperature / hidden_weight from --set recover.distill=... or recipes)")
    add_flag(p, "--finetune-steps", "finetune.steps", type=int, metavar="N")
    add_flag(p, "--recover-steps", "recover.steps", type=int, metavar="N")
    add_flag(p, "--batch-size", "finetune.batch_size", type=int, metavar="N")
    add_flag(p, "--learning-rate", "finetune.learning_rate", type=float, metavar="LR")
    add_flag(p, "--max-length", "model.max_length", type=int, metavar="N")
    add_flag(p, "--output", "output.dir", required=True, metavar="OUT")
    add_flag(p, "--push-to-hub", "output.push_to_hub", metavar="REPO")
    add_flag(p, "--export", "output.export", choices=[e for e in EXPORTS if e])
    add_flag(p, "--bits", "output.bits", type=int, choices=(8, 4))
    add_flag(p, "--group-size", "output.group_size", type=int, metavar="N")
    p.add_argument("--seed", type=int, default=None, help="seed of the data subset, new head and training")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other recipe field, e.g. --set recover.learning_rate=1e-4 (repeatable)")
    add_causal_lm_flags(p)
    add_quiet(p)
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from ..recipes.loader import apply_overrides, recipe_from_dict
    from .causal_lm import CAUSAL_LM_TASK, prune_main, refuse_lm_flags_for_glue

    if args.data__task == CAUSAL_LM_TASK:
        return prune_main(args)
    refuse_lm_flags_for_glue(args)

    data = flags_to_dict(args)
    if args.sweep is not None:
        data.setdefault("prune", {})["sweep"] = args.sweep
    if args.seed is not None:
        data["seed"] = args.seed
    if args.budget is not None:
        data.setdefault("prune", {})["budget"] = args.budget
    if args.distill:
        data.setdefault("recover", {}).setdefault("distill", {})
    # The recovery stage trains like the fine-tune unless told otherwise.
    for key in ("batch_size", "learning_rate"):
        if key in data.get("finetune", {}):
            data.setdefault("recover", {}).setdefault(key, data["finetune"][key])
    recipe = recipe_from_dict(apply_overrides(data, args.set), source="command line")
    from ..recipes.runner import run_recipe
    from ..report.progress import print_summary

    print_summary(run_recipe(recipe, quiet=args.quiet), recipe.output.dir)
    return 0

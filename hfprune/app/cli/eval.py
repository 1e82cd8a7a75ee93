"""`hfprune eval --model OUT --task TASK`: GLUE metrics of a (pruned) model on the task's validation split(s), or
the accuracy of a (pruned) CNN with `--task image-classification`."""

from __future__ import annotations

import argparse
import json
import tempfile

from .causal_lm import add_eval_flags
from .common import add_data_flags, add_quiet


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model (pruned or not) on a GLUE task", description=__doc__,
                       epilog="examples:\n  hfprune eval --model out/sst2 --task sst2 --data-dir ../shared/data/glue\n"
                              "  hfprune eval --model out/lm --task perplexity --text-file held_out.txt",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="PATH_OR_ID",
                   help="a folder written by hfprune (loaded with load_pruned) or a fine-tuned checkpoint")
    add_data_flags(p)
    p.add_argument("--dataset", default=None, metavar="NAME_OR_DIR",
                   help="image-classification: a datasets image dataset (its validation / test split)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="image-classification: resize images to this square size (default: the config's)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per evaluation batch")
    p.add_argument("--max-length", type=int, default=128, help="maximum tokens per example")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_eval_flags(p)
    add_quiet(p)
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from .causal_lm import PERPLEXITY_TASK, eval_main

    if args.data__task == PERPLEXITY_TASK:
        return eval_main(args)
    for flag, value in (("--text-file", args.text_file), ("--gguf-file", args.gguf_file),
                        ("--lm-eval-tasks", args.lm_eval_tasks)):
        if value is not None:
            raise ValueError(f"{flag} only applies to --task {PERPLEXITY_TASK}")
    from ..data import get_task, load_task_data, tokenize
    from ..recipes.modeling import load_classifier
    from ..recipes.training import evaluate_splits, make_trainer
    from ..report.progress import quiet_libraries

    if args.data__task == "image-classification":
        return _eval_images(args)
    task = get_task(args.data__task)
    if args.batch_size < 1 or args.max_length < 8:
        raise ValueError("--batch-size must be >= 1 and --max-length >= 8")
    with quiet_libraries(args.quiet):
        data = load_task_data(task, data_dir=args.data__data_dir, train_file=args.data__train_file,
                              validation_file=args.data__validation_file, splits=list(task.eval_splits),
                              max_eval_samples=args.data__max_eval_samples)
        model, tokenizer, _ = load_classifier(args.model, task, allow_new_head=False)
        encoded = tokenize(data, tokenizer, task, args.max_length, show_progress=not args.quiet)
        # An evaluation-only Trainer writes nothing, but TrainingArguments wants an output_dir: a temporary one
        # that goes away afterwards (the user's folders are untouched).
        with tempfile.TemporaryDirectory(prefix="hfprune-eval-") as work:
            trainer = make_trainer(model, tokenizer, task, eval_batch_size=args.batch_size, quiet=args.quiet,
                                   work_dir=work)
            metrics = evaluate_splits(trainer, task, {s: encoded[s] for s in task.eval_splits if s in encoded})
    if args.json:
        print(json.dumps({"task": task.name, "model": args.model, "metrics": metrics}, indent=2))
    else:
        for split, values in metrics.items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k in task.metrics)
            print(f"{task.name} {split} ({encoded[split].num_rows} examples): {shown}")
    return 0


def _eval_images(args: argparse.Namespace) -> int:
    """Accuracy of a CNN (a folder saved by hfprune, or any image-classification checkpoint)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    from ...io import load_pruned
    from ...structure import get_record
    from ..data.images import load_image_eval
    from ..recipes.image import accuracy
    from ..report.progress import quiet_libraries

    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    with quiet_libraries(args.quiet):
        config = AutoConfig.from_pretrained(args.model)
        data = load_image_eval(data_dir=args.data__data_dir, dataset=args.dataset,
                               validation_file=args.data__validation_file,
                               num_channels=int(getattr(config, "num_channels", 3)),
                               image_size=args.image_size or getattr(config, "image_size", None),
                               max_eval_samples=args.data__max_eval_samples)
        model = load_pruned(args.model) if get_record(config) else \
            AutoModelForImageClassification.from_pretrained(args.model)
        metrics = accuracy(model, data, args.batch_size)
    if args.json:
        print(json.dumps({"task": "image-classification", "model": args.model, "metrics": {"validation": metrics}},
                         indent=2))
    else:
        print(f"image-classification validation ({metrics['num_examples']} examples): accuracy "
              f"{metrics['accuracy']:.4f}")
    return 0

"""`hfprune eval --model OUT --task TASK`: GLUE metrics of a (pruned) model on the task's validation split(s), the
accuracy of a (pruned) CNN with `--task image-classification`, or the perplexity of a decoder with
`--task perplexity`."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import hfprune

from ...io import load_pruned, require_safetensors
from ...structure import get_record
from ..causal_lm.data import eval_windows, load_model, read_lines
from ..causal_lm.harness import check_include, require_lm_eval, run_lm_eval, task_names
from ..common.progress import quiet_libraries, show_bars
from ..glue.data import load_task_data, tokenize
from ..glue.modeling import load_classifier
from ..glue.run import evaluate_splits, glue_trainer
from ..glue.tasks import get_task
from ..image.data import load_image_eval
from ..image.options import IMAGE_TASK
from ..image.run import accuracy
from .flags import collect_flags, foreign_message

PERPLEXITY_TASK = "perplexity"
# The evaluation of each application's models: `hfprune eval --task perplexity` is the causal-lm application's.
_EVAL_KIND = {"glue": "glue", "image": IMAGE_TASK, "causal_lm": PERPLEXITY_TASK}
_KIND_LABEL = {"glue": "<GLUE task>", IMAGE_TASK: IMAGE_TASK, PERPLEXITY_TASK: PERPLEXITY_TASK}


def flag_owners(parser: argparse.ArgumentParser, groups: dict[str, argparse._ArgumentGroup]) -> dict[str, str]:
    """dest -> the one evaluation kind a flag applies to, derived like `hfprune prune`'s: a flag that some
    application's options spell belongs to those applications' evaluations (several: no restriction); a flag of
    eval alone belongs to the task group it is declared in."""
    specs = collect_flags()
    owners: dict[str, str] = {}
    for action in parser._actions:
        spec = next((specs[f] for f in action.option_strings if f in specs), None)
        if spec is not None:
            kinds = {_EVAL_KIND[app.name] for app in spec.apps}
            if len(kinds) == 1:
                owners[action.dest] = kinds.pop()
            continue
        for kind, group in groups.items():
            if action in group._group_actions:
                owners[action.dest] = kind
    return owners


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model (GLUE, image-classification, perplexity)",
                       description=__doc__,
                       epilog="examples:\n  hfprune eval --model out/sst2 --task sst2 --data-dir ../shared/data/glue\n"
                              "  hfprune eval --model out/lm --task perplexity --text-file held_out.txt",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="PATH_OR_ID",
                   help="a folder written by hfprune (loaded with load_pruned) or a fine-tuned checkpoint")
    p.add_argument("--task", required=True, metavar="TASK",
                   help=f"a GLUE task, {IMAGE_TASK} or {PERPLEXITY_TASK} (a decoder LLM)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="GLUE: folder in the original GLUE layout; image-classification: an imagefolder")
    p.add_argument("--train-file", default=None, metavar="FILE",
                   help="GLUE: the training file of the same run (not read; as in hfprune prune)")
    p.add_argument("--validation-file", default=None, metavar="FILE",
                   help="CSV/TSV/JSON validation file (.npz for images)")
    p.add_argument("--max-eval-samples", type=int, default=None, metavar="N",
                   help="evaluate on the first this-many validation examples")
    p.add_argument("--batch-size", type=int, default=64, help="examples per evaluation batch")
    p.add_argument("--max-length", type=int, default=128, help="maximum tokens per example")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    groups = {IMAGE_TASK: p.add_argument_group(f"--task {IMAGE_TASK}")}
    g = groups[IMAGE_TASK]
    g.add_argument("--dataset", default=None, metavar="NAME_OR_DIR",
                   help="a datasets image dataset (its validation / test split)")
    g.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="resize images to this square size (default: the config's)")
    g = groups[PERPLEXITY_TASK] = p.add_argument_group(f"--task {PERPLEXITY_TASK} (decoder LLMs)")
    g.add_argument("--text-file", default=None, metavar="FILE", help="UTF-8 text to measure perplexity on")
    g.add_argument("--gguf-file", default=None, metavar="NAME", help="load --model from this GGUF file in it")
    g.add_argument("--seq-len", type=int, default=512, metavar="N", help="tokens per window")
    g.add_argument("--eval-samples", type=int, default=64, metavar="N", help="at most this many windows")
    g.add_argument("--lm-eval-tasks", default=None, metavar="TASK,...",
                   help="also run lm-evaluation-harness tasks on the in-memory model (needs `pip install lm-eval`)")
    g.add_argument("--lm-eval-include", default=None, metavar="DIR",
                   help="a folder of local lm-eval task YAMLs (lm-eval's include_path)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no stage lines")
    p.set_defaults(handler=main, flag_owners=flag_owners(p, groups), flag_defaults={
        a.dest: (a.default, a.option_strings[0]) for a in p._actions if a.option_strings})


def main(args: argparse.Namespace) -> int:
    task = args.task.strip().lower()
    kind = task if task in (PERPLEXITY_TASK, IMAGE_TASK) else "glue"
    for dest, owner in args.flag_owners.items():
        default, flag = args.flag_defaults[dest]
        if getattr(args, dest) != default and owner != kind:
            raise ValueError(foreign_message(flag, [_KIND_LABEL[owner]], args.task))
    if kind == PERPLEXITY_TASK:
        return _eval_perplexity(args)
    if kind == IMAGE_TASK:
        return _eval_images(args)
    return _eval_glue(args)


def _eval_glue(args: argparse.Namespace) -> int:
    task = get_task(args.task)
    if args.batch_size < 1 or args.max_length < 8:
        raise ValueError("--batch-size must be >= 1 and --max-length >= 8")
    with quiet_libraries(args.quiet):
        data = load_task_data(task, data_dir=args.data_dir, train_file=args.train_file,
                              validation_file=args.validation_file, splits=list(task.eval_splits),
                              max_eval_samples=args.max_eval_samples)
        model, tokenizer, _ = load_classifier(args.model, task, allow_new_head=False)
        encoded = tokenize(data, tokenizer, task, args.max_length, show_progress=show_bars(args.quiet))
        # An evaluation-only Trainer writes nothing, but TrainingArguments wants an output_dir: a temporary one
        # that goes away afterwards (the user's folders are untouched).
        with tempfile.TemporaryDirectory(prefix="hfprune-eval-") as work:
            trainer = glue_trainer(model, tokenizer, task, eval_batch_size=args.batch_size, quiet=args.quiet,
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

    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    require_safetensors(args.model)  # a pickle-only folder: refused, naming the file
    with quiet_libraries(args.quiet):
        config = AutoConfig.from_pretrained(args.model)
        data = load_image_eval(data_dir=args.data_dir, dataset=args.dataset, validation_file=args.validation_file,
                               num_channels=int(getattr(config, "num_channels", 3)),
                               image_size=args.image_size or getattr(config, "image_size", None),
                               max_eval_samples=args.max_eval_samples)
        model = load_pruned(args.model) if get_record(config) else \
            AutoModelForImageClassification.from_pretrained(args.model, use_safetensors=True)
        metrics = accuracy(model, data, args.batch_size)
    if args.json:
        print(json.dumps({"task": IMAGE_TASK, "model": args.model, "metrics": {"validation": metrics}}, indent=2))
    else:
        print(f"{IMAGE_TASK} validation ({metrics['num_examples']} examples): accuracy {metrics['accuracy']:.4f}")
    return 0


def _check_perplexity_args(args: argparse.Namespace) -> None:
    """Cheap checks before the model is loaded."""
    if args.text_file is None:
        raise ValueError(f"--task {PERPLEXITY_TASK} needs --text-file (the text to score)")
    if args.lm_eval_tasks is not None:
        task_names(args.lm_eval_tasks)
        check_include(args.lm_eval_include)
        require_lm_eval()
    if not Path(args.text_file).is_file():
        raise FileNotFoundError(f"--text-file {args.text_file} is not a file")
    if args.seq_len < 2 or args.eval_samples < 1:
        raise ValueError("--seq-len must be >= 2 and --eval-samples >= 1")


def _eval_perplexity(args: argparse.Namespace) -> int:
    _check_perplexity_args(args)
    with quiet_libraries(args.quiet):
        model, tokenizer = load_model(args.model, args.gguf_file, args.quiet)
    windows = eval_windows(tokenizer, read_lines(args.text_file), args.seq_len, args.eval_samples)
    result = {"task": PERPLEXITY_TASK, "model": args.model, "text_file": args.text_file,
              "perplexity": hfprune.perplexity(model, windows), "windows": len(windows),
              "tokens": sum(int(w["input_ids"].numel()) for w in windows)}
    if args.lm_eval_tasks is not None:
        result["lm_eval"] = run_lm_eval(model, tokenizer, task_names(args.lm_eval_tasks), args.batch_size,
                                        args.lm_eval_include)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"perplexity {result['perplexity']:.3f} on {result['tokens']} tokens ({result['windows']} windows) "
              f"of {args.text_file}")
        for task, values in result.get("lm_eval", {}).items():
            print(f"{task}: {values}")
    return 0

"""The causal-LM side of `hfprune prune --task causal-lm` and `hfprune eval --task perplexity` (flags and glue).

The GLUE flags keep their recipe meaning; the ones that also make sense for a decoder are read from the same
attributes (`--heads`, `--ffn`, `--layers`, `--criterion`, `--layer-method`, `--recover-steps`, `--batch-size`,
`--learning-rate`, `--output`, `--seed`); GLUE-only flags given with `--task causal-lm` are refused by name.
"""

from __future__ import annotations

import argparse
import json

CAUSAL_LM_TASK = "causal-lm"
PERPLEXITY_TASK = "perplexity"
# GLUE recipe flags that mean nothing for a causal LM (dest -> flag, for the error message).
_GLUE_ONLY = {"data__data_dir": "--data-dir", "data__train_file": "--train-file",
              "data__validation_file": "--validation-file", "data__max_eval_samples": "--max-eval-samples",
              "data__max_train_samples": "--max-train-samples", "finetune__steps": "--finetune-steps",
              "prune__scope": "--scope", "prune__score_batches": "--score-batches", "model__max_length": "--max-length",
              "output__push_to_hub": "--push-to-hub", "sweep": "--sweep", "prune__channels": "--channels",
              "prune__channel_criterion": "--channel-criterion", "prune__channel_groups": "--channel-groups",
              "prune__channel_compensate": "--compensate",
              "data__dataset": "--dataset", "data__image_size": "--image-size", "output__export": "--export",
              "output__bits": "--bits", "output__group_size": "--group-size"}
_LM_ONLY = {"text_file": "--text-file", "eval_text_file": "--eval-text-file", "gguf_file": "--gguf-file",
            "sparsity": "--sparsity", "pattern": "--pattern", "num_samples": "--num-samples", "seq_len": "--seq-len",
            "round_to": "--round-to", "eval_samples": "--eval-samples"}


# Recipe flags that --task causal-lm reads too.
_LM_RECIPE_DESTS = {"model__name_or_path", "data__task", "prune__layers", "prune__heads", "prune__ffn",
                    "prune__criterion", "prune__layer_method", "recover__steps", "finetune__batch_size",
                    "finetune__learning_rate", "output__dir"}


def add_prune_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(f"--task {CAUSAL_LM_TASK} (decoder LLMs: calibration text, perplexity)")
    g.add_argument("--text-file", default=None, metavar="FILE",
                   help="UTF-8 calibration text; its last 10%% of lines are held out for perplexity unless "
                        "--eval-text-file is given")
    g.add_argument("--eval-text-file", default=None, metavar="FILE", help="held-out text for perplexity")
    g.add_argument("--gguf-file", default=None, metavar="NAME", help="load --model from this GGUF file in it")
    g.add_argument("--uniform", action="store_true",
                   help="the same heads / KV heads / FFN width in every layer (whole KV groups; a plain config)")
    g.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="with --uniform: kept FFN width a multiple of N (default 64)")
    g.add_argument("--sparsity", type=float, default=None, metavar="S",
                   help="weight sparsity of the projections (e.g. 0.5 with --criterion wanda | sparsegpt)")
    g.add_argument("--pattern", default=None, metavar="N:M", help="N:M weight sparsity, e.g. 2:4")
    g.add_argument("--num-samples", type=int, default=None, metavar="N", help="calibration windows (default 64)")
    g.add_argument("--seq-len", type=int, default=None, metavar="N", help="tokens per window (default 512)")
    g.add_argument("--eval-samples", type=int, default=None, metavar="N",
                   help="at most this many held-out windows for perplexity (default 64)")


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(f"--task {PERPLEXITY_TASK} (decoder LLMs)")
    g.add_argument("--text-file", default=None, metavar="FILE", help="UTF-8 text to measure perplexity on")
    g.add_argument("--gguf-file", default=None, metavar="NAME", help="load --model from this GGUF file in it")
    g.add_argument("--seq-len", type=int, default=512, metavar="N", help="tokens per window")
    g.add_argument("--eval-samples", type=int, default=64, metavar="N", help="at most this many windows")
    g.add_argument("--lm-eval-tasks", default=None, metavar="TASK,...",
                   help="also run lm-evaluation-harness tasks on the in-memory model (needs `pip install lm-eval`)")


def _given(args: argparse.Namespace, names: dict) -> list[str]:
    return [flag for dest, flag in names.items() if getattr(args, dest, None) not in (None, False, [])]


def refuse_lm_flags_for_glue(args: argparse.Namespace) -> None:
    """A GLUE run given causal-LM flags: name them (they would otherwise be silently ignored)."""
    given = _given(args, _LM_ONLY) + (["--uniform"] if getattr(args, "uniform", False) else [])
    if given:
        raise ValueError(f"{', '.join(given)} only apply to --task {CAUSAL_LM_TASK}")


def prune_main(args: argparse.Namespace) -> int:
    from ..causal_lm import CausalLMOptions, run_causal_lm

    # Any other recipe flag (section__name) is GLUE / image only too, also ones added after this list was written.
    others = [f"--{name.split('__', 1)[1].replace('_', '-')}" for name, value in vars(args).items()
              if "__" in name and value is not None and name not in _GLUE_ONLY and name not in _LM_RECIPE_DESTS]
    given = _given(args, _GLUE_ONLY) + others + [f"--set {s}" for s in args.set]
    if given:
        raise ValueError(f"{', '.join(given)} do not apply to --task {CAUSAL_LM_TASK}")
    if args.text_file is None:
        raise ValueError(f"--task {CAUSAL_LM_TASK} needs --text-file (the calibration text)")
    fields = {"model": args.model__name_or_path, "text_file": args.text_file, "output": args.output__dir,
              "eval_text_file": args.eval_text_file, "gguf_file": args.gguf_file, "layers": args.prune__layers,
              "heads": args.prune__heads, "ffn": args.prune__ffn, "criterion": args.prune__criterion,
              "uniform": args.uniform, "sparsity": args.sparsity, "pattern": args.pattern,
              "recover_steps": args.recover__steps, "batch_size": args.finetune__batch_size,
              "learning_rate": args.finetune__learning_rate, "seed": args.seed, "num_samples": args.num_samples,
              "seq_len": args.seq_len, "round_to": args.round_to, "eval_samples": args.eval_samples,
              "layer_method": args.prune__layer_method}
    options = CausalLMOptions(**{k: v for k, v in fields.items() if v is not None})
    results = run_causal_lm(options, quiet=args.quiet)
    ppl = results["perplexity"]
    shown = " -> ".join(f"{k} {v:.3f}" for k, v in ppl.items() if v is not None)
    print(f"causal-lm perplexity: {shown}; params {results['before']['params']:,} -> {results['after']['params']:,}")
    print(f"outputs in {options.output}: {', '.join(results['files'])}")
    return 0


def lm_eval_tasks(model, tokenizer, tasks: str, batch_size: int) -> dict:
    """Run lm-evaluation-harness on the in-memory model through its `HFLM` wrapper."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ValueError("--lm-eval-tasks needs lm-evaluation-harness, which is not installed "
                         "(pip install lm-eval)") from None
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ValueError("--lm-eval-tasks: give at least one task name, e.g. --lm-eval-tasks hellaswag,arc_easy")
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=wrapped, tasks=names)
    return out.get("results", {})


def eval_main(args: argparse.Namespace) -> int:
    from ..causal_lm import eval_windows, load_model

    if args.text_file is None:
        raise ValueError(f"--task {PERPLEXITY_TASK} needs --text-file (the text to score)")
    if args.lm_eval_tasks is not None:
        try:
            import lm_eval  # noqa: F401  (checked before the model is loaded)
        except ImportError:
            raise ValueError("--lm-eval-tasks needs lm-evaluation-harness, which is not installed "
                             "(pip install lm-eval)") from None
    from pathlib import Path

    import hfprune

    if not Path(args.text_file).is_file():
        raise FileNotFoundError(f"--text-file {args.text_file} is not a file")
    if args.seq_len < 2 or args.eval_samples < 1:
        raise ValueError("--seq-len must be >= 2 and --eval-samples >= 1")
    from ..report.progress import quiet_libraries

    with quiet_libraries(args.quiet):
        model, tokenizer = load_model(args.model, args.gguf_file)
    lines = [t for t in Path(args.text_file).read_text(encoding="utf-8").splitlines() if t.strip()]
    windows = eval_windows(tokenizer, lines, args.seq_len, args.eval_samples)
    result = {"task": PERPLEXITY_TASK, "model": args.model, "text_file": args.text_file,
              "perplexity": hfprune.perplexity(model, windows), "windows": len(windows),
              "tokens": sum(int(w["input_ids"].numel()) for w in windows)}
    if args.lm_eval_tasks is not None:
        result["lm_eval"] = lm_eval_tasks(model, tokenizer, args.lm_eval_tasks, args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"perplexity {result['perplexity']:.3f} on {result['tokens']} tokens ({result['windows']} windows) "
              f"of {args.text_file}")
        for task, values in result.get("lm_eval", {}).items():
            print(f"{task}: {values}")
    return 0

"""`hfprune demo`: the whole workflow on a built-in task, no download, about 15 s of CPU time.

A tiny BERT (built in code, with a word-level tokenizer) learns a synthetic sentiment task (does a sentence hold more
positive than negative words?), then runs through exactly what `hfprune prune` does: fine-tune with `Trainer`,
score heads (Michel) and FFN neurons (Taylor), remove half of each, recover, evaluate dense and pruned, measure
latency, save (safetensors, results.json, report.md, plots, model card), reload with `hfprune.load_pruned`.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
from pathlib import Path

import torch

import hfprune

from ..apps import recipe_from_dict, run_recipe
from ..common.progress import quiet_libraries
from ..common.render import print_summary

POSITIVE = ["good", "great", "fine", "superb", "lovely", "excellent", "fun", "moving"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "dull", "boring", "weak", "messy"]
NEUTRAL = ["the", "a", "movie", "film", "plot", "actor", "cast", "story", "scene", "was", "is", "and", "but",
           "very", "quite", "rather", "ending", "script", "music", "it", "this", "of", "with", "overall"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def synthetic_sentences(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Sentences of filler words with 0-3 positive and 0-3 negative words (never a tie); label 1 = more positive."""
    rng = random.Random(seed)
    texts, labels = [], []
    while len(texts) < n:
        pos, neg = rng.randint(0, 3), rng.randint(0, 3)
        if pos == neg:
            continue
        words = rng.choices(NEUTRAL, k=rng.randint(4, 10)) + rng.choices(POSITIVE, k=pos) + \
            rng.choices(NEGATIVE, k=neg)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(int(pos > neg))
    return texts, labels


def build_tokenizer():
    """A word-level WordPiece-free tokenizer over the demo vocabulary, with BERT's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + POSITIVE + NEGATIVE + NEUTRAL)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def build_base(folder: Path, seed: int) -> None:
    """Save a randomly initialised tiny BERT classifier and its tokenizer to `folder` (the demo's 'checkpoint')."""
    import transformers

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4,
                                     num_attention_heads=8, intermediate_size=256, max_position_embeddings=64,
                                     num_labels=2, pad_token_id=0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_split(path: Path, n: int, seed: int) -> None:
    texts, labels = synthetic_sentences(n, seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "label"])
        writer.writerows(zip(texts, labels))


def demo_recipe(work: Path, output: Path, seed: int = 0):
    """The demo's recipe: the same `GlueRecipe` object `hfprune run` / `hfprune prune` build."""
    return recipe_from_dict({
        "description": "hfprune demo: a tiny BERT on a synthetic sentiment task (built in code, no download).",
        "seed": seed,
        "model": {"name_or_path": str(work / "base"), "max_length": 32},
        "data": {"task": "sst2", "train_file": str(work / "train.csv"), "validation_file": str(work / "dev.csv")},
        "finetune": {"steps": 200, "batch_size": 32, "learning_rate": 2e-3},
        "prune": {"heads": 0.5, "ffn": 0.5, "criterion": "michel", "score_batches": 16,
                  "sweep": [0.0, 0.25, 0.5, 0.75, 0.875]},
        "recover": {"steps": 50, "batch_size": 32, "learning_rate": 1e-3},
        "eval": {"latency_batch_size": 32, "latency_seq_len": 32},
        "output": {"dir": str(output)},
    }, source="demo")


def run_demo(output: str | Path | None = None, seed: int = 0, quiet: bool = False) -> dict:
    """Run the demo; returns results.json's content. Outputs go to `output` (default: a new temporary folder)."""
    output = Path(output) if output else Path(tempfile.mkdtemp(prefix="hfprune-demo-")) / "pruned"
    threads = torch.get_num_threads()
    # A 64-wide model: intra-op threads cost more in synchronisation than they gain (seconds on a busy machine).
    torch.set_num_threads(1)
    try:
        with quiet_libraries(quiet), tempfile.TemporaryDirectory(prefix="hfprune-demo-work-") as tmp:
            work = Path(tmp)
            build_base(work / "base", seed)
            write_split(work / "train.csv", 4000, seed)
            write_split(work / "dev.csv", 500, seed + 1)
            results = run_recipe(demo_recipe(work, output, seed), quiet=quiet)
    finally:
        torch.set_num_threads(threads)

    model = hfprune.load_pruned(output)
    tokenizer = build_tokenizer().from_pretrained(output)
    examples = ["the film was great and the music lovely", "a dull plot and a terrible ending but fine music"]
    with torch.no_grad():
        preds = model(**tokenizer(examples, return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
    print_summary(results, output)
    print(f"reloaded with hfprune.load_pruned({str(output)!r}): {model_summary(model)}")
    for text, p in zip(examples, preds):
        print(f"  {text!r} -> {model.config.id2label[p]}")
    return results


def model_summary(model) -> str:
    s = hfprune.model_structure(model)
    return f"{s['num_layers']} layers, heads per layer {s['heads']}, FFN per layer {s['ffn']}"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the whole workflow on a built-in tiny task (no download)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=None, metavar="OUT", help="output folder (default: a new temp folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the model and training")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no stage lines")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    run_demo(args.output, seed=args.seed, quiet=args.quiet)
    return 0


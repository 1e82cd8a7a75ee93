"""The causal-LM application behind `hfprune prune --task causal-lm` and `hfprune eval --task perplexity`.

One run: load a decoder (a folder, a Hub id, or a GGUF file with `gguf_file=`), cut the text file into calibration
windows and a held-out evaluation text, measure perplexity, prune (whole layers, uniform heads / FFN neurons, or
weight-level sparsity with Wanda / SparseGPT / magnitude), optionally recover with a few steps of LM fine-tuning,
measure perplexity again, and write model + tokenizer + results.json + report.md + plots atomically.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..criteria import criterion_names, get_criterion


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class CausalLMOptions:
    """What one causal-LM pruning run does (the CLI flags spell these fields).

    Args:
        model (`str`): folder or Hub id of a causal LM (with `gguf_file`: the folder holding that GGUF file).
        text_file (`str`): UTF-8 text; its lines are the calibration text (and the evaluation text, see below).
        output (`str`): output folder (replaced only if an earlier hfprune run wrote it).
        eval_text_file (`str`, *optional*): held-out text for perplexity; default: the last `eval_fraction` of the
            lines of `text_file`, which are then left out of calibration.
        eval_fraction (`float`, defaults to 0.1): share of `text_file` lines held out when no `eval_text_file`.
        gguf_file (`str`, *optional*): load the model from this GGUF file inside `model` (weights dequantized).
        num_samples (`int`, defaults to 64): calibration windows.
        seq_len (`int`, defaults to 512): tokens per calibration / evaluation window.
        batch_size (`int`, defaults to 4): windows per batch.
        eval_samples (`int`, defaults to 64): at most this many consecutive evaluation windows.
        layers (`int`, *optional*): remove this many layers, chosen by `layer_method`.
        layer_method (`str`, defaults to `"block_influence"`): a layer criterion of the registry: "block_influence",
            "angular" (a contiguous block), "ablation", "gate", ...
        heads (`float`, *optional*): fraction of attention heads to remove.
        ffn (`float`, *optional*): fraction of FFN neurons to remove.
        criterion (`str`, *optional*): heads / FFN: a head / neuron criterion of the registry, "activation" by
            default (Minitron, no labels); sparsity: a weight criterion, "wanda" by default.
        uniform (`bool`, defaults to `False`): the same heads / KV heads / FFN width in every layer (plain config).
        round_to (`int`, defaults to 64): with `uniform`, the kept FFN width is a multiple of this.
        sparsity (`float`, *optional*): fraction of the projection weights to zero (unstructured).
        pattern (`str`, *optional*): N:M pattern such as "2:4" (fixes the sparsity at 1 - N/M).
        recover_steps (`int`, defaults to 0): LM fine-tuning steps on calibration windows after pruning.
        learning_rate (`float`, defaults to 5e-5): AdamW learning rate of the recovery.
        seed (`int`, defaults to 0): seed of the calibration windows and the random criterion.
    """

    model: str
    text_file: str
    output: str
    eval_text_file: str | None = None
    eval_fraction: float = 0.1
    gguf_file: str | None = None
    num_samples: int = 64
    seq_len: int = 512
    batch_size: int = 4
    eval_samples: int = 64
    layers: int | None = None
    layer_method: str = "block_influence"
    heads: float | None = None
    ffn: float | None = None
    criterion: str | None = None
    uniform: bool = False
    round_to: int = 64
    sparsity: float | None = None
    pattern: str | None = None
    recover_steps: int = 0
    learning_rate: float = 5e-5
    seed: int = 0

    def __post_init__(self):
        for name in ("num_samples", "seq_len", "batch_size", "eval_samples", "round_to"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   f"{name} must be a positive integer, got {value!r}")
        _check(self.recover_steps >= 0, f"recover_steps must be >= 0, got {self.recover_steps}")
        _check(self.layers is None or self.layers >= 1, f"layers must be a positive integer, got {self.layers}")
        for name in ("heads", "ffn", "sparsity"):
            value = getattr(self, name)
            _check(value is None or 0.0 < value < 1.0, f"{name} must be a fraction in (0, 1), got {value!r}")
        _check(0.0 < self.eval_fraction < 1.0, f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        layer_methods = criterion_names("layers")
        _check(self.layer_method in layer_methods,
               f"layer_method must be one of {layer_methods}, got {self.layer_method!r}")
        structured = self.layers is not None or self.heads is not None or self.ffn is not None
        weights = self.sparsity is not None or self.pattern is not None
        _check(structured or weights, "nothing to prune: give layers, heads / ffn, or sparsity / pattern")
        _check(not (structured and weights), "give either structured pruning (layers / heads / ffn) or weight "
               "sparsity (sparsity / pattern), not both in one run")
        if self.pattern is not None:
            _check(re.fullmatch(r"\d+:\d+", self.pattern) is not None,
                   f"pattern must look like N:M (e.g. 2:4), got {self.pattern!r}")
            _check(self.sparsity is None, "pattern N:M fixes the sparsity; drop sparsity")

        if weights:
            names = criterion_names("weights")
            self.criterion = self.criterion or ("wanda" if "wanda" in names else "magnitude")
            _check(self.criterion in names, f"criterion for sparsity must be one of {names}, got {self.criterion!r}")
        else:
            names = criterion_names("heads")
            self.criterion = self.criterion or "activation"
            _check(self.criterion in names, f"criterion for heads / ffn must be one of {names}, got "
                   f"{self.criterion!r}")
        for name in ("text_file", "eval_text_file"):
            path = getattr(self, name)
            _check(path is None or Path(path).is_file(), f"{name} {path!r} is not a file")


# ----- data -----------------------------------------------------------------------------------------------------------
def split_texts(options: CausalLMOptions) -> tuple[list[str], list[str]]:
    """(calibration lines, evaluation lines): a separate file, or the last `eval_fraction` of the lines held out."""
    lines = [t for t in Path(options.text_file).read_text(encoding="utf-8").splitlines() if t.strip()]
    if options.eval_text_file is not None:
        held = [t for t in Path(options.eval_text_file).read_text(encoding="utf-8").splitlines() if t.strip()]
        return lines, held
    _check(len(lines) >= 2, f"text_file {options.text_file} has {len(lines)} non-empty line(s); at least 2 are "
           "needed to hold some out for perplexity (or give eval_text_file)")
    cut = max(1, min(len(lines) - 1, round(len(lines) * (1 - options.eval_fraction))))
    return lines[:cut], lines[cut:]


def eval_windows(tokenizer, texts: list[str], seq_len: int, count: int) -> list[dict]:
    """Consecutive non-overlapping windows of the evaluation text (a shorter text: one window of all of it)."""
    from ..calibration import token_stream

    stream = token_stream(tokenizer, texts)
    _check(stream.numel() >= 2, "the evaluation text has fewer than 2 tokens: nothing to score")
    n = min(count, stream.numel() // seq_len)
    if n == 0:
        return [{"input_ids": stream.unsqueeze(0)}]
    ids = stream[:n * seq_len].reshape(n, seq_len)
    return [{"input_ids": ids[i:i + 1]} for i in range(n)]


def load_model(name: str, gguf_file: str | None = None):
    """(model, tokenizer) in float32 eval mode; an hfprune folder with a non-plain structure via `load_pruned`."""
    import transformers

    from ..io import load_pruned

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = transformers.AutoTokenizer.from_pretrained(name, **kwargs)
    config_path = Path(name) / "config.json"
    record = json.loads(config_path.read_text()).get("hfprune") if config_path.is_file() else None
    if record is not None and not gguf_file:
        model = load_pruned(name)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.float().eval(), tokenizer


# ----- stages ---------------------------------------------------------------------------------------------------------
def structured_plan(model, calib: list[dict], options: CausalLMOptions):
    """Scores -> PruningPlan for layers / heads / FFN; also returns the scores (for the report)."""
    import hfprune

    plan, scores = hfprune.PruningPlan(), {}
    kwargs = {"show_progress": False}
    seed = {"seed": options.seed} if options.criterion == "random" else {}
    if options.heads is not None:
        heads = hfprune.head_importance(model, calib, criterion=options.criterion, **kwargs, **seed)
        scores["heads"] = heads
        plan.heads = hfprune.select_heads(heads, ratio=options.heads, model=model, uniform=options.uniform).heads
    if options.ffn is not None:
        neurons = hfprune.neuron_importance(model, calib, criterion=options.criterion, **kwargs, **seed)
        plan.neurons = hfprune.select_neurons(neurons, ratio=options.ffn, uniform=options.uniform,
                                              round_to=options.round_to if options.uniform else None).neurons
    if options.layers is not None:
        extra = {"n": options.layers} if options.layer_method == "angular" else {}
        layers = hfprune.layer_importance(model, calib, method=options.layer_method, **kwargs, **extra)
        scores["layers"] = layers
        plan.layers = hfprune.select_layers(layers, count=options.layers,
                                            contiguous=options.layer_method == "angular").layers
    return plan, scores


def lm_recover(model, batches: list[dict], steps: int, learning_rate: float) -> list[float]:
    """A few steps of causal-LM fine-tuning (AdamW) on `batches`, cycling; returns the loss of each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    losses = []
    model.train()
    try:
        for step in range(steps):
            batch = batches[step % len(batches)]
            loss = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                         labels=batch["input_ids"]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    finally:
        model.eval()
    return losses


def _param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _nonzero_fraction(model) -> float:
    from ..arch import get_adapter

    adapter = get_adapter(model)
    total = zeros = 0
    for block in adapter.layers(model):
        for path in adapter.linear_paths():
            weight = block.get_submodule(path).weight
            total += weight.numel()
            zeros += int((weight == 0).sum())
    return zeros / max(total, 1)


def run_causal_lm(options: CausalLMOptions, quiet: bool = False) -> dict:
    """Run one causal-LM pruning job end to end (see the module docstring); returns results.json's content."""
    import hfprune

    from .report.outputs import check_output_dir
    from .report.progress import quiet_libraries

    check_output_dir(options.output)  # before any work: never overwrite a folder hfprune did not write
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    times: dict[str, float] = {}

    def stage(name: str, start: float) -> None:
        times[name] = round(time.perf_counter() - start, 3)
        say(f"[{name}] {times[name]:.1f} s")

    t = time.perf_counter()
    calib_lines, eval_lines = split_texts(options)
    with quiet_libraries(quiet):
        model, tokenizer = load_model(options.model, options.gguf_file)
    stage("load", t)
    t = time.perf_counter()
    calib = hfprune.calibration_batches(tokenizer, calib_lines, num_samples=options.num_samples,
                                        seq_len=options.seq_len, seed=options.seed, batch_size=options.batch_size,
                                        model=model)
    evals = eval_windows(tokenizer, eval_lines, options.seq_len, options.eval_samples)
    stage("data", t)
    before = {"structure": hfprune.model_structure(model), "params": _param_count(model)}
    t = time.perf_counter()
    ppl = {"dense": hfprune.perplexity(model, evals)}
    stage("eval_dense", t)
    say(f"perplexity (dense): {ppl['dense']:.3f}")

    t = time.perf_counter()
    plan, scores = None, {}
    if options.sparsity is not None or options.pattern is not None:
        pattern = options.pattern or "unstructured"
        # The block-by-block criteria can skip their copy of the original weights: the run finalizes at once.
        blockwise = get_criterion(options.criterion, "weights").sequential
        extra = {"keep_original": False} if blockwise else {}
        handle = hfprune.sparsify(model, options.sparsity, criterion=options.criterion, pattern=pattern,
                                  dataloader=calib, **extra)
        handle.finalize()
    else:
        plan, scores = structured_plan(model, calib, options)
        stage("score", t)
        t = time.perf_counter()
        hfprune.prune(model, plan)
    stage("prune", t)
    t = time.perf_counter()
    ppl["pruned"] = hfprune.perplexity(model, evals)
    stage("eval_pruned", t)
    say(f"perplexity (pruned): {ppl['pruned']:.3f}")
    losses = []
    if options.recover_steps:
        t = time.perf_counter()
        train = hfprune.calibration_batches(tokenizer, calib_lines, num_samples=options.recover_steps
                                            * options.batch_size, seq_len=options.seq_len, seed=options.seed + 1,
                                            batch_size=options.batch_size, model=model)
        losses = lm_recover(model, train, options.recover_steps, options.learning_rate)
        stage("recover", t)
        t = time.perf_counter()
        ppl["recovered"] = hfprune.perplexity(model, evals)
        stage("eval_recovered", t)
        say(f"perplexity (recovered): {ppl['recovered']:.3f}")
    after = {"structure": hfprune.model_structure(model), "params": _param_count(model),
             "weight_sparsity": _nonzero_fraction(model)}
    results = _results(options, ppl, times, before, after, plan, scores, losses, len(evals))
    _write(model, tokenizer, results, scores, options.output)
    return results


def _results(options, ppl, times, before, after, plan, scores, losses, n_eval) -> dict:
    from hfprune import __version__

    from .report.results import _clean, machine_info

    return _clean({
        "hfprune_version": __version__, "task": "causal-lm", "options": asdict(options),
        "perplexity": ppl, "stage_seconds": times, "before": before, "after": after,
        "plan": plan.to_dict() if plan is not None else None,
        "scores": {k: v for k, v in scores.items()}, "recover_losses": losses,
        "eval_windows": n_eval, "machine": machine_info(),
    })


def render_report(results: dict, plots: list[str]) -> str:
    ppl, opts = results["perplexity"], results["options"]
    what = (f"weight sparsity {results['after']['weight_sparsity']:.1%} ({opts['criterion']}, "
            f"{opts['pattern'] or 'unstructured'})" if results["plan"] is None else
            f"layers {results['plan']['layers']}, heads {opts['heads']}, ffn {opts['ffn']} ({opts['criterion']}, "
            f"layer method {opts['layer_method']}, uniform={opts['uniform']})")
    lines = [f"# hfprune causal-LM run: {opts['model']}", "", f"Pruned: {what}.", "",
             "| model | perplexity |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in ppl.items() if value is not None]
    b, a = results["before"], results["after"]
    lines += ["", f"Parameters: {b['params']:,} -> {a['params']:,}; layers {b['structure']['num_layers']} -> "
              f"{a['structure']['num_layers']}; heads per layer {sorted(set(a['structure']['heads']))}, KV heads "
              f"{sorted(set(a['structure']['kv_heads']))}, FFN {sorted(set(a['structure']['ffn']))}.", "",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["stage_seconds"].items()]
    lines += ["", *(f"![{p}]({p})" for p in plots), ""]
    return "\n".join(lines)


def _plots(results: dict, scores: dict, folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional output
        return []
    written = []
    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = [k for k, v in results["perplexity"].items() if v is not None]
    ax.bar(names, [results["perplexity"][k] for k in names], color="#2171b5")
    ax.set_ylabel("perplexity")
    ax.set_title("perplexity before / after pruning")
    fig.tight_layout()
    fig.savefig(folder / "perplexity.png", dpi=100)
    plt.close(fig)
    written.append("perplexity.png")
    if "layers" in scores:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        removed = set(results["plan"]["layers"])
        values = scores["layers"].tolist()
        ax.bar(range(len(values)), values, color=["#cb181d" if i in removed else "#2171b5"
                                                  for i in range(len(values))])
        ax.set_xlabel("layer (red: removed)")
        ax.set_ylabel(results["options"]["layer_method"])
        fig.tight_layout()
        fig.savefig(folder / "layer_scores.png", dpi=100)
        plt.close(fig)
        written.append("layer_scores.png")
    return written


def _write(model, tokenizer, results: dict, scores: dict, out_dir: str) -> None:
    from ..io import atomic_dir
    from ..io.formats import write_model

    with atomic_dir(Path(out_dir), overwrite=True) as tmp:  # check_output_dir (the --output guard) decided first
        # As save_pruned: a GGUF-loaded model saves as a plain checkpoint, a uniform Llama whose head count
        # LlamaConfig refuses is written under the Mistral classes, so the folder loads with plain from_pretrained.
        results["loads_as"] = write_model(model, tmp, tokenizer, label=out_dir).class_name
        plots = _plots(results, scores, tmp)
        results["files"] = sorted({*(p.name for p in tmp.iterdir()), "results.json", "report.md"})
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "report.md").write_text(render_report(results, plots))

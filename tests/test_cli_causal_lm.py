"""`hfprune prune --task causal-lm` and `hfprune eval --task perplexity` on a tiny Llama with a word-level tokenizer
built in code, and the one-line errors for bad input."""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers
from tiny_lm import WORDS, word_tokenizer

from hfprune.app.cli.main import main


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_tokenizer = word_tokenizer


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny Llama (4 heads, 2 KV heads, 4 layers) + tokenizer in a folder, and a text file of 300 lines."""
    root = tmp_path_factory.mktemp("lm")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(WORDS) + 2, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      max_position_embeddings=128, pad_token_id=1, eos_token_id=1, bos_token_id=1)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(300)]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "short.txt").write_text("the cat sat\nthe dog ran\n")
    return root


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _base(root, out):
    return ["prune", "--task", "causal-lm", "--model", root / "model", "--text-file", root / "train.txt",
            "--num-samples", "8", "--seq-len", "16", "--batch-size", "4", "--eval-samples", "6", "--output", out,
            "--quiet"]


def test_prune_layers_by_block_influence_writes_outputs_and_reloads(tiny_lm, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = _run(_base(tiny_lm, out) + ["--layers", "1", "--layer-method", "block_influence",
                                                  "--recover-steps", "2"], capsys)
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    assert set(results["perplexity"]) == {"dense", "pruned", "recovered"}
    assert all(v > 1 for v in results["perplexity"].values())
    assert {"load", "score", "prune", "eval_dense", "eval_pruned", "recover"} <= set(results["stage_seconds"])
    assert results["after"]["structure"]["num_layers"] == 3 and len(results["plan"]["layers"]) == 1
    assert len(results["recover_losses"]) == 2 and results["eval_windows"] == 6
    assert {"report.md", "perplexity.png", "layer_scores.png", "config.json", "model.safetensors"} <= set(
        p.name for p in out.iterdir())
    assert "perplexity" in (out / "report.md").read_text() and "causal-lm perplexity" in stdout
    plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert plain.config.num_hidden_layers == 3
    rc, stdout, err = _run(["eval", "--task", "perplexity", "--model", out, "--text-file", tiny_lm / "train.txt",
                            "--seq-len", "16", "--eval-samples", "4", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(stdout)["perplexity"] > 1 and json.loads(stdout)["windows"] == 4


def test_prune_uniform_activation_heads_ffn_gives_a_plain_config(tiny_lm, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = _run(_base(tiny_lm, out) + ["--heads", "0.5", "--ffn", "0.25", "--criterion", "activation",
                                             "--uniform", "--round-to", "16"], capsys)
    assert rc == 0, err
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (2, 1, 48)
    plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    results = json.loads((out / "results.json").read_text())
    assert results["after"]["structure"]["heads"] == [2] * 4
    ids = torch.randint(2, len(WORDS) + 2, (1, 10))
    assert torch.isfinite(plain(ids).logits).all()


def test_prune_weight_sparsity(tiny_lm, tmp_path, capsys):
    from hfprune.criteria import criterion_names

    criterion = "wanda" if "wanda" in criterion_names("weights") else "magnitude"
    out = tmp_path / "out"
    rc, _, err = _run(_base(tiny_lm, out) + ["--sparsity", "0.5", "--criterion", criterion], capsys)
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    assert abs(results["after"]["weight_sparsity"] - 0.5) < 0.01 and results["plan"] is None


@pytest.mark.parametrize(("extra", "message"), [
    (["--layers", "1", "--data-dir", "x"],
     "--data-dir applies to --task <GLUE task> or image-classification only, not to --task causal-lm"),
    (["--heads", "0.5", "--sparsity", "0.5"], "not both"),
    ([], "nothing to prune"),
    (["--sparsity", "0.5", "--criterion", "activation"], "criterion for sparsity must be one of"),
    (["--sparsity", "0.5", "--pattern", "2:4"], "pattern N:M fixes the sparsity"),
    (["--layers", "1", "--seq-len", "4096"], "seq_len"),
])
def test_bad_causal_lm_input_is_one_line_and_writes_nothing(tiny_lm, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc, _, err = _run(_base(tiny_lm, out) + extra, capsys)
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_text_shorter_than_one_sample_and_missing_lm_eval(tiny_lm, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _base(tiny_lm, out) + ["--layers", "1"]
    argv[argv.index(tiny_lm / "train.txt")] = tiny_lm / "short.txt"
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "shorter than one sample" in err and not out.exists()
    rc, _, err = _run(["prune", "--task", "sst2", "--model", tiny_lm / "model", "--text-file", tiny_lm / "train.txt",
                       "--output", out], capsys)
    assert rc == 2 and "--text-file applies to --task causal-lm only, not to --task sst2" in err
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        rc, _, err = _run(["eval", "--task", "perplexity", "--model", tiny_lm / "model", "--text-file",
                           tiny_lm / "train.txt", "--lm-eval-tasks", "hellaswag"], capsys)
        assert rc == 2 and "lm-evaluation-harness, which is not installed" in err


def test_an_output_folder_not_written_by_hfprune_is_refused_before_work(tiny_lm, tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, _, err = _run(_base(tiny_lm, out) + ["--layers", "1"], capsys)
    assert rc == 2 and "not written by hfprune" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_image_and_export_flags_are_refused_for_causal_lm(tiny_lm, tmp_path, capsys):
    rc, _, err = _run(_base(tiny_lm, tmp_path / "out") + ["--layers", "1", "--channels", "0.5"], capsys)
    assert rc == 2 and "--channels applies to --task image-classification only, not to --task causal-lm" in err


def test_uniform_head_count_llamaconfig_refuses_is_written_as_a_plain_folder(tmp_path, capsys):
    """8 -> 6 heads with hidden 64: LlamaConfig refuses 64 % 6, so the CLI writes the folder as save_pruned does
    (Mistral classes, same computation) and plain from_pretrained loads it with the pruned model's logits."""
    root = tmp_path / "lm8"
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(WORDS) + 2, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                                      max_position_embeddings=128, pad_token_id=1, eos_token_id=1, bos_token_id=1)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rng = random.Random(0)
    (root / "train.txt").write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)))
    out = tmp_path / "out"
    rc, _, err = _run(_base(root, out) + ["--heads", "0.25", "--criterion", "activation", "--uniform"], capsys)
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["after"]["structure"]["heads"] == [6, 6] and results["loads_as"] == "MistralForCausalLM"
    plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(plain).__name__ == "MistralForCausalLM"
    import hfprune

    pruned = hfprune.load_pruned(out)
    assert type(pruned).__name__ == "LlamaForCausalLM"
    ids = torch.randint(2, len(WORDS) + 2, (2, 10))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, pruned(ids).logits, atol=1e-5)


def test_a_causal_lm_yaml_recipe_runs_like_the_flags(tiny_lm, tmp_path, capsys):
    """`hfprune run` takes a causal-LM recipe: the same options as `hfprune prune --task causal-lm`, as YAML."""
    import yaml

    recipe = tmp_path / "lm.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_lm / "model")},
        "data": {"task": "causal-lm", "text_file": str(tiny_lm / "train.txt"), "num_samples": 8, "seq_len": 16,
                 "batch_size": 4, "eval_samples": 6},
        "prune": {"layers": 1, "layer_method": "block_influence"},
        "output": {"dir": str(tmp_path / "out"), "plots": False}}))
    rc, stdout, err = _run(["run", recipe, "--quiet"], capsys)
    assert rc == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["after"]["structure"]["num_layers"] == 3 and results["recipe"]["prune"]["layers"] == 1
    assert "causal-lm perplexity" in stdout and not (tmp_path / "out" / "perplexity.png").exists()
    rc, _, err = _run(["run", recipe, "--set", "prune.channels=0.5"], capsys)
    assert rc == 2 and "prune.channels does not apply to task causal-lm" in err


@pytest.fixture
def rowmag():
    """A new block-by-block weight criterion and a new layer criterion, registered for one test only (no app file
    names them)."""
    import hfprune.criteria as registry
    from hfprune.criteria import BlockwiseResult, Option, register_criterion
    from hfprune.criteria._blockwise import prune_blocks
    from hfprune.ranking import lowest_k

    seen = {}

    class Count:
        def __init__(self):
            self.rows = 0

        def add(self, x):
            self.rows += x.reshape(-1, x.shape[-1]).shape[0]

    @register_criterion("rowmag", units=("weights",), needs="blocks", order=35,
                        options={"power": Option(lambda v: isinstance(v, int) and v >= 1, "a positive integer")},
                        summary="|w| ** power within each row, block by block (a test criterion)")
    def rowmag_fn(model, dataloader, *, targets, sparsity, pattern, device=None, originals=None, power: int = 1):
        seen.update(originals=originals, power=power)

        def solve(target, weight, stat):
            assert stat.rows > 0  # the block-by-block pass fed the layer
            k = round(sparsity * weight.shape[1])
            keep = torch.stack([~lowest_k(row.abs() ** power, k) for row in weight])
            return keep, None

        masks, info = prune_blocks(model, targets, dataloader, lambda t: Count(), solve, device=device,
                                   originals=originals)
        return BlockwiseResult(masks, originals, info)

    @register_criterion("last_first", units=("layers",), summary="the last layer is the least important (a test)")
    def last_first(model, dataloader=None, **common):
        return torch.arange(len(hfprune_adapter_layers(model)), 0, -1).float()

    yield seen
    registry.unregister_criterion("rowmag", "weights")
    registry.unregister_criterion("last_first", "layers")


def hfprune_adapter_layers(model):
    import hfprune

    return hfprune.get_adapter(model).layers(model)


def test_a_new_block_by_block_criterion_is_a_cli_choice_and_runs(rowmag, tiny_lm, tmp_path, capsys):
    import hfprune
    from hfprune.app.causal_lm.options import LMPrune

    out = tmp_path / "out"
    rc, _, err = _run(_base(tiny_lm, out) + ["--sparsity", "0.5", "--criterion", "rowmag"], capsys)
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    assert abs(results["after"]["weight_sparsity"] - 0.5) < 0.01
    assert rowmag == {"originals": None, "power": 1}  # a block-by-block criterion: the run keeps no copy
    # Its own options are the registry's: accepted with a valid value, refused (naming it) otherwise.
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm / "model")
    batches = [{"input_ids": torch.randint(2, len(WORDS) + 2, (2, 12))}]
    handle = hfprune.sparsify(model, 0.5, criterion="rowmag", dataloader=batches, power=2)
    assert handle.info["blocks"] == 4 and rowmag["power"] == 2
    handle.remove()
    with pytest.raises(ValueError, match="power must be a positive integer; got 0"):
        hfprune.sparsify(model, 0.5, criterion="rowmag", dataloader=batches, power=0)
    # A new layer criterion is a valid --layer-method of the causal-LM run.
    options = LMPrune(layers=1, layer_method="last_first")
    assert options.layer_method == "last_first"


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    """A tiny Qwen3-MoE (8 experts top-2, layer 1 dense) + the word-level tokenizer."""
    root = tmp_path_factory.mktemp("moe")
    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(vocab_size=len(WORDS) + 2, hidden_size=32, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                         intermediate_size=48, moe_intermediate_size=16, num_experts=8,
                                         num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
                                         max_position_embeddings=128, pad_token_id=1, eos_token_id=1, bos_token_id=1)
    transformers.Qwen3MoeForCausalLM(config).save_pretrained(root / "model")
    _tokenizer().save_pretrained(root / "model")
    return root


def test_prune_experts_by_reap_writes_the_per_layer_table_and_a_plain_config(tiny_lm, tiny_moe, tmp_path, capsys):
    out = tmp_path / "out"
    base = _base(tiny_lm, out)
    base[base.index(tiny_lm / "model")] = tiny_moe / "model"
    rc, _, err = _run(base + ["--experts", "0.5", "--criterion", "reap"], capsys)
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["after"]["structure"]["experts"] == [4, 0, 4] and results["recipe"]["prune"]["criterion"] == "reap"
    assert sorted(results["plan"]["experts"]) == ["0", "2"] and sorted(results["scores"]["experts"]) == ["0", "2"]
    report = (out / "report.md").read_text()
    assert "| layer | experts before | experts after | removed |" in report
    removed = ", ".join(map(str, results["plan"]["experts"]["2"]))
    assert f"| 2 | 8 | 4 | {removed} |" in report
    plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert plain.config.num_experts == 4


@pytest.mark.parametrize(("extra", "message"), [
    (["--experts", "0.5", "--heads", "0.5"], "experts and heads / ffn / hidden read different criteria"),
    (["--experts", "0.5", "--hidden", "0.5"], "experts and heads / ffn / hidden read different criteria"),
    (["--experts", "0.5", "--criterion", "activation"], "criterion for experts must be one of"),
    (["--experts", "1.5"], "experts must be a fraction"),
])
def test_bad_expert_flags_are_one_line(tiny_lm, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc, _, err = _run(_base(tiny_lm, out) + extra, capsys)
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_experts_on_a_dense_model_is_one_line(tiny_lm, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = _run(_base(tiny_lm, out) + ["--experts", "0.5"], capsys)
    assert rc == 2 and "has no MoE experts" in err and err.count("\n") == 1, err

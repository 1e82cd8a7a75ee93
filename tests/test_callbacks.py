"""Trainer callbacks: scoring, pruning with recovery training, save/reload, LayerDrop."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import make_model
from transformers import Trainer, TrainingArguments

import hfprune
from hfprune.callbacks import PruningConfig


class Synthetic(torch.utils.data.Dataset):
    """Label = second token mod 3: learnable, but only by moving information to the [CLS] position."""

    def __init__(self, n: int, seed: int, vocab: int = 30, seq: int = 8):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, vocab, (n, seq), generator=g)
        self.ids[:, 0] = 1
        self.labels = self.ids[:, 1] % 3

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}

    def batch(self, start: int = 0, size: int | None = None) -> dict:
        end = len(self) if size is None else start + size
        return {"input_ids": self.ids[start:end], "attention_mask": torch.ones_like(self.ids[start:end]),
                "labels": self.labels[start:end]}


def _args(tmp_path, steps: int, **kw) -> TrainingArguments:
    defaults = {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "report_to": [], "use_cpu": True, "seed": 0,
                "save_strategy": "no", "logging_strategy": "no", "disable_tqdm": True}
    return TrainingArguments(output_dir=str(tmp_path / "out"), **{**defaults, "max_steps": steps, **kw})


def test_trainer_scores_prunes_saves_and_reloads(tmp_path):
    model = make_model("bert").train()
    train, dev = Synthetic(64, 0, vocab=90), Synthetic(16, 1, vocab=90)
    scoring = [dev.batch(0, 8), dev.batch(8, 8)]
    pruning = hfprune.PruningCallback(scoring, heads_ratio=0.25, neurons_ratio=0.25, layers=1, at_step=2)
    heads = hfprune.HeadImportanceCallback(scoring)
    neurons = hfprune.NeuronImportanceCallback(scoring, criterion="magnitude", every_n_steps=2)
    layers = hfprune.LayerImportanceCallback(scoring, method="gate")
    probe = _MaskProbe(pruning)
    trainer = Trainer(model=model, args=_args(tmp_path, 4), train_dataset=train,
                      callbacks=[probe, pruning, heads, neurons, layers])
    trainer.train()

    plan = pruning.plan
    assert plan.num_heads() == 3 and plan.num_neurons() == 36 and len(plan.layers) == 1
    assert probe.masked_steps == [3, 4]  # masked from the scoring step on, until train end
    assert pruning.pruned
    structure = hfprune.model_structure(model)
    assert structure["num_layers"] == 2 and sum(structure["heads"]) < 8
    # Callbacks after the pruning one scored the pruned model: NaN where heads are gone.
    assert heads.scores.shape == (2, max(structure["heads"]))
    assert int((~torch.isnan(heads.scores)).sum()) == sum(structure["heads"])
    assert [h["step"] for h in neurons.history] == [2, 4]
    assert layers.scores.shape == (2,)

    saved = tmp_path / "saved"
    trainer.save_model(str(saved))
    reloaded = hfprune.load_pruned(saved)
    batch = {k: v for k, v in dev.batch().items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, model(**batch).logits, atol=1e-5)

    report = json.loads((tmp_path / "out" / "importance.json").read_text())
    assert set(report) == {"heads", "neurons", "layers", "pruning"}
    assert list(report["pruning"])[:3] == ["callback", "config", "state"]  # hyper-parameters before state
    assert report["pruning"]["config"]["heads_ratio"] == 0.25 and report["pruning"]["state"]["pruned"]
    assert hfprune.PruningPlan.from_dict(report["pruning"]["plan"]).heads == plan.heads
    assert report["heads"]["scores"][0] and report["heads"]["state"]["global_step"] == 4


class _MaskProbe(transformers.TrainerCallback):
    def __init__(self, pruning):
        self.pruning, self.masked_steps = pruning, []

    def on_step_begin(self, args, state, control, **kwargs):
        if self.pruning._gates is not None:
            self.masked_steps.append(state.global_step + 1)


def _lm_examples(n: int = 24) -> tuple[list[dict], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 90, (n, 8), generator=g)
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids], ids


def test_mask_left_on_when_not_pruning_at_end(tmp_path):
    model = make_model("llama").train()
    examples, ids = _lm_examples()
    callback = hfprune.PruningCallback(heads_ratio=0.5, criterion="magnitude", at_epoch=1, prune_at_end=False)
    Trainer(model=model, args=_args(tmp_path, -1, num_train_epochs=2), train_dataset=examples,
            callbacks=[callback]).train()
    assert callback.plan.num_heads() == 6 and not callback.pruned
    assert callback.plan.meta["global_step"] == 3  # end of epoch 1 (24 examples / batch 8)
    assert hfprune.model_structure(model)["heads"] == [4, 4, 4]
    batch = {"input_ids": ids[:2]}
    model.eval()
    with torch.no_grad():
        masked_logits = model(**batch).logits
        callback.remove_mask()
        pruned = hfprune.prune(copy.deepcopy(model), callback.plan)
        assert torch.allclose(pruned(**batch).logits, masked_logits, atol=1e-5)
        assert not torch.allclose(model(**batch).logits, masked_logits, atol=1e-5)


class _Snapshot(transformers.TrainerCallback):
    """Records the structure and the optimizer's tensors at every step."""

    def __init__(self):
        self.structures, self.foreign = [], []

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.structures.append(hfprune.model_structure(model)["ffn"])
        own = {id(p) for p in model.parameters()}
        self.foreign.append(sum(id(p) not in own for g in optimizer.param_groups for p in g["params"]))


def test_prune_mode_trains_the_smaller_model(tmp_path):
    model = make_model("llama").train()
    examples, ids = _lm_examples(32)
    pruning = hfprune.PruningCallback(examples[:8], neurons_ratio=0.5, layers=[2], at_step=2, mode="prune",
                                       scope="layer")
    snapshot = _Snapshot()
    trainer = Trainer(model=model, args=_args(tmp_path, 4), train_dataset=examples, callbacks=[pruning, snapshot])
    trainer.train()
    assert pruning.pruned and snapshot.structures == [[48, 48, 48], [24, 24], [24, 24], [24, 24]]
    assert snapshot.foreign == [0, 0, 0, 0]  # the optimizer holds exactly the model's (new) tensors
    # The new, sliced tensors were stepped after surgery: the optimizer has fresh moments of their shape.
    down = hfprune.get_adapter(model).ffn_out(hfprune.get_adapter(model).layers(model)[0]).weight
    assert down in trainer.optimizer.state and trainer.optimizer.state[down]["exp_avg"].shape == down.shape
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = hfprune.load_pruned(tmp_path / "saved")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids[:2]).logits, model(input_ids=ids[:2]).logits, atol=1e-5)


def test_callback_uses_the_trainers_eval_dataset_when_bound(tmp_path):
    model = make_model("bert").train()
    trainer = Trainer(model=model, args=_args(tmp_path, 1, per_device_eval_batch_size=4),
                      train_dataset=Synthetic(8, 0, vocab=90), eval_dataset=Synthetic(8, 1, vocab=90))
    callback = hfprune.HeadImportanceCallback(max_batches=1)
    trainer.add_callback(callback.bind(trainer))
    trainer.train()
    assert callback.scores.shape == (3, 4) and torch.isfinite(callback.scores).all()

    lone = hfprune.LayerImportanceCallback()  # no data, not bound, no evaluation ran
    trainer = Trainer(model=model, args=_args(tmp_path, 1), train_dataset=Synthetic(8, 0, vocab=90),
                      callbacks=[lone])
    with pytest.raises(ValueError, match="no data to score on"):
        trainer.train()


def test_callback_options_are_validated():
    with pytest.raises(ValueError, match=r"heads_ratio must be a number in \[0, 1\]"):
        hfprune.PruningCallback(heads_ratio=1.5)
    with pytest.raises(ValueError, match="nothing to prune"):
        hfprune.PruningCallback()
    with pytest.raises(ValueError, match="not both"):
        hfprune.PruningCallback(heads_ratio=0.1, at_step=3, at_epoch=1)
    with pytest.raises(TypeError, match="unknown option 'ratio'"):
        hfprune.PruningCallback(ratio=0.1)
    with pytest.raises(ValueError, match="criterion"):
        hfprune.HeadImportanceCallback(criterion="gradient")
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        hfprune.LayerDropCallback(p=1.0)
    with pytest.raises(ValueError, match="mode"):
        hfprune.LayerDropCallback(mode="random")
    assert PruningConfig(heads_ratio=0.5).mode == "mask"


def _layerdrop_model(seed: int = 0):
    torch.manual_seed(seed)
    # A larger init than BERT's 0.02 makes every block matter, so removing blocks hurts a plainly trained model.
    config = transformers.BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=3,
                                     initializer_range=0.1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


class _DropProbe(transformers.TrainerCallback):
    def __init__(self, layerdrop):
        self.layerdrop, self.dropped, self.reset = layerdrop, [], True

    def on_step_begin(self, args, state, control, **kwargs):
        self.dropped.append(list(self.layerdrop.dropped))

    def on_step_end(self, args, state, control, **kwargs):
        self.reset &= all(float(g) == 1.0 for g in self.layerdrop._gates.layer_gates.values())


def test_layerdrop_makes_every_other_layer_removable(tmp_path):
    train, test = Synthetic(2048, 0, vocab=30), Synthetic(256, 1, vocab=30)
    half = hfprune.PruningPlan(layers=[1, 3])
    losses = {}
    for name in ("plain", "layerdrop"):
        model = _layerdrop_model()
        callbacks = []
        if name == "layerdrop":
            layerdrop = hfprune.LayerDropCallback(p=0.5, mode="every_other")
            probe = _DropProbe(layerdrop)
            callbacks = [layerdrop, probe]
        args = _args(tmp_path / name, 100, per_device_train_batch_size=32, learning_rate=3e-3,
                     lr_scheduler_type="constant")
        Trainer(model=model, args=args, train_dataset=train, callbacks=callbacks).train()
        assert not any(m._forward_hooks for m in model.modules())  # gates gone after training
        model.eval()
        with torch.no_grad():
            full = float(model(**test.batch()).loss)
            pruned = float(hfprune.prune(copy.deepcopy(model), half)(**test.batch()).loss)
        losses[name] = (full, pruned)
    assert all(set(d) <= {1, 3} for d in probe.dropped) and sum(map(len, probe.dropped)) > 50
    assert probe.reset  # no layer is skipped outside a training step (evaluation sees the full model)
    plain_full, plain_half = losses["plain"]
    ld_half = losses["layerdrop"][1]
    assert plain_half > 1.5 * plain_full  # removing half the blocks hurts the plainly trained model
    assert ld_half < 0.7 * plain_half  # and hurts the LayerDrop-trained one much less


class _GateState(transformers.TrainerCallback):
    """Listed *before* LayerDropCallback: what the other callbacks see of its gates."""

    def __init__(self, layerdrop):
        self.layerdrop, self.dropped_in_step, self.dropped_at_step_end = layerdrop, 0, 0

    def _zeros(self) -> int:
        return sum(float(g) == 0.0 for g in self.layerdrop._gates.layer_gates.values())

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.dropped_in_step += self._zeros()

    def on_step_end(self, args, state, control, **kwargs):
        self.dropped_at_step_end += self._zeros()


def test_layerdrop_restores_the_full_model_before_any_callbacks_step_end(tmp_path):
    # A PruningCallback(at_step=...) or a scoring callback listed before LayerDropCallback scores in on_step_end:
    # it must see every layer, not the ones skipped for that training step.
    layerdrop = hfprune.LayerDropCallback(p=0.5, seed=0)
    probe = _GateState(layerdrop)
    args = _args(tmp_path, 6, gradient_accumulation_steps=2, per_device_train_batch_size=4)
    Trainer(model=_layerdrop_model(), args=args, train_dataset=Synthetic(48, 0, vocab=30),
            callbacks=[probe, layerdrop]).train()
    assert probe.dropped_in_step > 0  # layers were skipped during the steps
    assert probe.dropped_at_step_end == 0


def test_random_criterion_without_seed_is_refused_before_training():
    # It used to fail only when scoring, i.e. after the training run up to at_step / its end.
    with pytest.raises(ValueError, match="criterion='random' needs a seed"):
        hfprune.PruningCallback(heads_ratio=0.5, criterion="random")
    with pytest.raises(ValueError, match="neuron_criterion='random' needs a seed"):
        hfprune.PruningCallback(neurons_ratio=0.5, neuron_criterion="random")
    with pytest.raises(ValueError, match="needs a seed"):
        hfprune.HeadImportanceCallback(criterion="random")
    with pytest.raises(ValueError, match="needs a seed"):
        hfprune.NeuronImportanceCallback(criterion="random")
    assert hfprune.PruningCallback(heads_ratio=0.5, criterion="random", seed=0).config.seed == 0
    hfprune.PruningCallback(neurons_ratio=0.5, criterion="random")  # the head criterion is unused here


def test_layerdrop_retrain_after_an_interrupted_run_leaves_no_stale_gates():
    # trainer.train() interrupted mid-step (KeyboardInterrupt, OOM) never reaches on_train_end: the step's dropped
    # layers keep gate 0. Training again used to attach a second set of gates on top, so those layers stayed skipped.
    model = _layerdrop_model().eval()
    batch = Synthetic(8, 1, vocab=30).batch()
    with torch.no_grad():
        full = model(**batch).logits
    layerdrop = hfprune.LayerDropCallback(p=0.9, seed=0)
    layerdrop.on_train_begin(None, None, None, model=model)
    model.train()
    layerdrop.on_step_begin(None, None, None, model=model)
    assert layerdrop.dropped  # ... and the run dies here
    layerdrop.on_train_begin(None, None, None, model=model)  # the next trainer.train()
    layerdrop.on_train_end(None, None, None)
    model.eval()
    assert not any(m._forward_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, full)


def test_data_free_criteria_score_without_any_data(tmp_path):
    # "magnitude" / "random" read no data, but the callbacks demanded some and failed at train end without it.
    model = make_model("bert").train()
    heads = hfprune.HeadImportanceCallback(criterion="magnitude")
    neurons = hfprune.NeuronImportanceCallback(criterion="random", seed=0)
    Trainer(model=model, args=_args(tmp_path, 2), train_dataset=Synthetic(32, 0, vocab=90),
            callbacks=[heads, neurons]).train()
    assert torch.equal(heads.scores, hfprune.head_importance(model, criterion="magnitude", show_progress=False))
    assert [n.numel() for n in neurons.scores] == [48, 48, 48]
    saved = json.loads((tmp_path / "out" / "importance.json").read_text())
    assert set(saved) == {"heads", "neurons"}


def test_explicit_layer_indices_are_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="negative"):
        hfprune.PruningCallback(layers=[-1])
    pruning = hfprune.PruningCallback(layers=[5], at_step=1)
    trainer = Trainer(model=make_model("bert").train(), args=_args(tmp_path, 2),
                      train_dataset=Synthetic(32, 0, vocab=90), callbacks=[pruning])
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        trainer.train()
    assert trainer.state.global_step == 0  # refused before the first step, not after training up to at_step


# ----- issue 18: scoring data, visible lines, checks before training, a folder that loads without hfprune ----------
class _Counting(Synthetic):
    """Records every index read, to prove which dataset the scorers used."""

    def __init__(self, n: int, seed: int):
        super().__init__(n, seed, vocab=90)
        self.reads: list[int] = []

    def __getitem__(self, i):
        self.reads.append(int(i))
        return super().__getitem__(i)


@pytest.mark.parametrize("bound", [False, True])
def test_default_scoring_reads_a_seeded_training_slice_never_the_eval_set(tmp_path, bound):
    train, dev = _Counting(64, 0), _Counting(16, 1)
    pruning = hfprune.PruningCallback(heads_ratio=0.5, at_step=2, num_samples=24)
    trainer = Trainer(model=make_model("bert").train(), args=_args(tmp_path, 3), train_dataset=train,
                      eval_dataset=dev, callbacks=[pruning])
    if bound:
        pruning.bind(trainer)
    trainer.train()
    assert pruning.pruned and dev.reads == []
    used = pruning.plan.meta["scoring_data"]
    assert {k: used[k] for k in ("source", "examples", "of", "seed")} == \
        {"source": "train", "examples": 24, "of": 64, "seed": 0}
    assert len(set(used["indices"])) == 24 and set(used["indices"]) <= set(train.reads)
    # Seeded by `seed` (args.seed when None): another seed, another slice; the same seed, the same slice.
    slices = []
    for seed in (1, 0):
        again = hfprune.PruningCallback(heads_ratio=0.5, at_step=1, num_samples=24, seed=seed)
        Trainer(model=make_model("bert").train(), args=_args(tmp_path, 1), train_dataset=_Counting(64, 0),
                callbacks=[again]).train()
        slices.append(again.plan.meta["scoring_data"]["indices"])
    assert slices[0] != used["indices"] and slices[1] == used["indices"]


def test_eval_scoring_only_when_asked_and_bound(tmp_path):
    train, dev = _Counting(64, 0), _Counting(16, 1)
    pruning = hfprune.PruningCallback(heads_ratio=0.5, at_step=2, scoring_data="eval")
    trainer = Trainer(model=make_model("bert").train(), args=_args(tmp_path, 3), train_dataset=train,
                      eval_dataset=dev, callbacks=[pruning])
    pruning.bind(trainer)
    trainer.train()
    assert sorted(set(dev.reads)) == list(range(16))  # the instrument sees reads: the test above can fail
    assert pruning.plan.meta["scoring_data"] == {"source": "eval"}
    with pytest.raises(ValueError, match="scoring_data must be one of"):
        hfprune.PruningCallback(heads_ratio=0.5, scoring_data="dev")


def test_mask_and_prune_lines_are_warnings(tmp_path, caplog):
    # Default levels: caplog sees what Python's default logging shows (WARNING and above), no set_level.
    model = make_model("bert").train()
    pruning = hfprune.PruningCallback(heads_ratio=0.5, neurons_ratio=0.5, at_step=2)
    Trainer(model=model, args=_args(tmp_path, 4), train_dataset=Synthetic(64, 0, vocab=90),
            callbacks=[pruning]).train()
    lines = [r.getMessage() for r in caplog.records if r.name == "hfprune" and r.levelno == logging.WARNING]
    assert lines[0].startswith("hfprune: masked at step 2 (scored on 64 of 64 training examples, seed 0; ")
    assert lines[0].endswith(": heads 12 -> 6, FFN 144 -> 72")
    assert lines[1] == "hfprune: pruned at train end (step 4): heads 12 -> 6, FFN 144 -> 72"
    assert hfprune.model_structure(model)["heads"] != [4, 4, 4] and sum(hfprune.model_structure(model)["heads"]) == 6


_STDERR_RUN = r"""
import sys
sys.path.insert(0, sys.argv[1])
import torch
from conftest import make_model
from test_callbacks import Synthetic, _args
from pathlib import Path
from transformers import Trainer
import hfprune

torch.set_num_threads(1)
pruning = hfprune.PruningCallback(heads_ratio=0.5, layers=[2], at_step=1, mode="prune", criterion="magnitude")
Trainer(model=make_model("bert").train(), args=_args(Path(sys.argv[2]), 2), train_dataset=Synthetic(16, 0, vocab=90),
        callbacks=[pruning]).train()
"""


def test_prune_line_reaches_stderr_with_default_logging(tmp_path):
    # A fresh interpreter, nothing configured: what a user running a script sees.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(hfprune.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", _STDERR_RUN, str(Path(__file__).parent), str(tmp_path)], env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hfprune: pruned at step 1 (scored without data): layers 3 -> 2, heads 12 -> 4" in proc.stderr


def _steps_probe():
    class Probe(transformers.TrainerCallback):
        steps = 0

        def on_step_begin(self, args, state, control, **kwargs):
            Probe.steps += 1

    return Probe()


_ROWS = [{"input_ids": torch.tensor([1, 5, 6, 7]), "attention_mask": torch.ones(4, dtype=torch.long),
          "labels": torch.tensor(1)}] * 4


@pytest.mark.parametrize(("dataset", "options", "error"), [
    ([], {}, r"scoring data \(the dataset given to the callback\) is empty"),
    ([{k: v for k, v in r.items() if k != "labels"} for r in _ROWS], {}, "has no 'labels'"),
    ([{"input_ids": [1, 5, 6][: 2 + i % 2], "labels": 0} for i in range(4)], {}, "cannot be collated"),
    ([{"token_ids": r["input_ids"], "labels": r["labels"]} for r in _ROWS], {},
     r"does not run through BertForSequenceClassification \(batch keys: \['labels', 'token_ids'\]\)"),
    (None, {"scoring_data": "eval"}, "needs the trainer"),
    (None, {"layers": 3}, "cannot remove 3 of 3 layers"),
    (None, {"min_per_layer": 3}, "cannot remove 6 of 12 heads while keeping min_per_layer=3"),
])
def test_data_and_plan_problems_fail_before_training(tmp_path, dataset, options, error):
    options = {"heads_ratio": 0.5, **options} if "layers" not in options else options
    pruning = hfprune.PruningCallback(dataset, at_step=2, **options)
    probe = _steps_probe()
    trainer = Trainer(model=make_model("bert").train(), args=_args(tmp_path, 3),
                      train_dataset=Synthetic(32, 0, vocab=90), callbacks=[pruning, probe])
    with pytest.raises(ValueError, match=f"^PruningCallback: .*{error}"):
        trainer.train()
    assert probe.steps == 0 and trainer.state.global_step == 0 and pruning.plan is None


def test_untokenized_training_set_fails_before_training(tmp_path):
    # The default scoring slice comes from the training set, through the Trainer's column removal and collator: a
    # text column the model cannot read leaves batches with labels only.
    from datasets import Dataset

    raw = Dataset.from_list([{"sentence": f"sentence {i}", "label": i % 3} for i in range(40)])
    pruning = hfprune.PruningCallback(heads_ratio=0.5, at_step=2)
    trainer = Trainer(model=make_model("bert").train(), args=_args(tmp_path, 3), train_dataset=raw,
                      callbacks=[pruning])
    with pytest.raises(ValueError, match=r"^PruningCallback: the scoring data \(40 of 40 training examples, seed 0\)"
                                         r" does not run through .*\['labels'\]"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_eval_scoring_without_an_eval_dataset_fails_before_training(tmp_path):
    pruning = hfprune.PruningCallback(heads_ratio=0.5, at_step=2, scoring_data="eval")
    trainer = Trainer(model=make_model("bert").train(), args=_args(tmp_path, 3),
                      train_dataset=Synthetic(32, 0, vocab=90), callbacks=[pruning])
    pruning.bind(trainer)
    with pytest.raises(ValueError, match="scoring_data='eval', but the trainer has no eval_dataset"):
        trainer.train()
    assert trainer.state.global_step == 0


_PLAIN_LOADER = r"""
import sys
sys.modules["hfprune"] = None  # hfprune cannot be imported here
import torch
import transformers
from safetensors.torch import load_file

torch.set_num_threads(1)
ref = load_file(sys.argv[2])
model = transformers.AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True)
with torch.no_grad():
    diff = (model.eval()(input_ids=ref["input_ids"]).logits - ref["logits"]).abs().max().item()
print(f"LOADED {type(model).__module__.split('.')[0]} {diff}")
"""


def test_saved_folder_loads_with_plain_transformers(tmp_path, caplog, monkeypatch):
    from safetensors.torch import save_file

    model = make_model("bert").train()
    pruning = hfprune.PruningCallback(heads_ratio=0.5, neurons_ratio=0.3, at_step=2)
    trainer = Trainer(model=model, args=_args(tmp_path, 3), train_dataset=Synthetic(32, 0, vocab=90),
                      callbacks=[pruning])
    trainer.train()
    folder = tmp_path / "saved"
    trainer.save_model(str(folder))
    assert (folder / "modeling_hfprune.py").is_file()
    hint = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "saved the pruned" in
            r.getMessage()]
    assert len(hint) == 1 and "AutoModelForSequenceClassification.from_pretrained(" in hint[0]
    assert "trust_remote_code=True" in hint[0] and "size mismatch" in hint[0]

    ids = Synthetic(4, 3, vocab=90).ids
    model.eval()
    with torch.no_grad():
        save_file({"input_ids": ids, "logits": model(input_ids=ids).logits}, str(tmp_path / "ref.safetensors"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-I", "-c", _PLAIN_LOADER, str(folder), str(tmp_path / "ref.safetensors")],
                          env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, module, diff = next(x for x in proc.stdout.splitlines() if x.startswith("LOADED ")).split()
    assert module == "transformers_modules" and float(diff) <= 1e-5

    # A copy of the pruned model (deepcopy, or a pickle) saves with its remote code too.
    clone = copy.deepcopy(model)
    clone.save_pretrained(tmp_path / "clone")
    assert (tmp_path / "clone" / "modeling_hfprune.py").is_file()

    # When the export is refused, the save still happens and the line says how to load the folder instead.
    def refuse(folder):
        raise ValueError("refused for the test")

    monkeypatch.setattr(hfprune.remote, "add_remote_code", refuse)
    trainer.save_model(str(tmp_path / "again"))
    last = caplog.records[-1].getMessage()
    assert caplog.records[-1].levelno == logging.WARNING and "without remote code (refused for the test)" in last
    assert "hfprune.load_pruned(" in last and (tmp_path / "again" / "model.safetensors").is_file()

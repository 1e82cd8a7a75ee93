"""DistillationTrainer: the loss equals a hand computation (classification, causal LM, hidden states across a removed
layer), the teacher stays frozen, bad input is refused."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_inputs, make_model

import hfprune
from hfprune.recovery.distill import DistillationTrainer


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, save_strategy="no",
                             **kw)


def _student(teacher, plan):
    student = copy.deepcopy(teacher)
    hfprune.prune(student, plan)
    with torch.no_grad():  # a student that differs from the teacher beyond the removed units
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return student.eval()


def _hand_kl(s, t, temperature, mask=None):
    log_s, log_t = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    rows = (log_t.exp() * (log_t - log_s)).sum(-1)
    return (rows[mask] if mask is not None else rows).mean() * temperature ** 2


def test_classification_loss_equals_hand_computation(tmp_path):
    teacher = make_model("bert")
    student = _student(teacher, hfprune.PruningPlan(heads={0: [1, 2]}, neurons={1: list(range(20))}))
    trainer = DistillationTrainer(student, teacher_model=teacher, alpha=0.3, temperature=3.0, args=_args(tmp_path))
    inputs = {**make_inputs(student, batch=4, seq=7, seed=2), "labels": torch.tensor([0, 2, 1, 1])}
    loss = trainer.compute_loss(student, inputs)
    with torch.no_grad():
        s, t = student(**make_inputs(student, batch=4, seq=7, seed=2)).logits, teacher(
            **make_inputs(student, batch=4, seq=7, seed=2)).logits
    expected = 0.3 * _hand_kl(s, t, 3.0) + 0.7 * F.cross_entropy(s, inputs["labels"])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert _hand_kl(s, t, 3.0) > 1e-4  # the teacher term is not trivially zero


def test_causal_lm_loss_is_per_token_and_masked(tmp_path):
    teacher = make_model("llama")
    student = _student(teacher, hfprune.PruningPlan(heads={1: [0, 1]}, neurons={0: list(range(24))}))
    trainer = DistillationTrainer(student, teacher_model=teacher, alpha=1.0, temperature=2.0, args=_args(tmp_path))
    batch = make_inputs(student, batch=3, seq=8, seed=4)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = trainer.compute_loss(student, {**batch, "labels": labels})
    with torch.no_grad():
        s, t = student(**batch).logits, teacher(**batch).logits
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100  # position t is scored when token t+1 has a label
    assert torch.allclose(loss, _hand_kl(s, t, 2.0, mask), atol=1e-6)
    assert not torch.allclose(loss, _hand_kl(s, t, 2.0), atol=1e-6)  # the mask matters
    # Without labels (alpha=1): every attended position counts.
    loss = trainer.compute_loss(student, batch)
    assert torch.allclose(loss, _hand_kl(s, t, 2.0, batch["attention_mask"].bool()), atol=1e-6)


def test_hidden_states_are_matched_across_a_removed_layer(tmp_path):
    teacher = make_model("bert")
    student = _student(teacher, hfprune.PruningPlan(layers=[1], heads={0: [3]}))
    trainer = DistillationTrainer(student, teacher_model=teacher, alpha=1.0, temperature=1.0, hidden_weight=0.5,
                                  args=_args(tmp_path))
    assert trainer.layer_map == {0: 0, 1: 2}  # student layer 1 was teacher layer 2
    batch = make_inputs(student, batch=3, seq=7, seed=6)
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        so, to = student(**batch, output_hidden_states=True), teacher(**batch, output_hidden_states=True)
    valid = batch["attention_mask"].bool()
    mse = [(so.hidden_states[s + 1] - to.hidden_states[t + 1]).pow(2)[valid].mean() for s, t in ((0, 0), (1, 2))]
    expected = _hand_kl(so.logits, to.logits, 1.0) + 0.5 * torch.stack(mse).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # A second pruning keeps the mapping: the record's source_index, not the position.
    hfprune.prune(student, hfprune.PruningPlan(layers=[0]))
    trainer = DistillationTrainer(student, teacher_model=teacher, alpha=1.0, hidden_weight=1.0, args=_args(tmp_path))
    assert trainer.layer_map == {0: 2}


def test_teacher_is_frozen_in_eval_mode_and_training_runs(tmp_path):
    from datasets import Dataset

    teacher = make_model("bert")
    student = _student(teacher, hfprune.PruningPlan(heads={0: [0, 1]}))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    rows = []
    for i in range(8):
        batch = make_inputs(student, batch=1, seq=7, seed=10 + i)
        rows.append({"input_ids": batch["input_ids"][0].tolist(), "attention_mask": [1] * 7, "labels": i % 3})
    trainer = DistillationTrainer(student, teacher_model=teacher, hidden_weight=0.1,
                                  args=_args(tmp_path, max_steps=3, per_device_train_batch_size=4,
                                             learning_rate=1e-3), train_dataset=Dataset.from_list(rows))
    trainer.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())
    assert trainer.state.global_step == 3


def test_teacher_in_bfloat16(tmp_path):
    teacher = make_model("bert")
    student = _student(teacher, hfprune.PruningPlan(heads={0: [0]}))
    trainer = DistillationTrainer(student, teacher_model=teacher, teacher_dtype="bfloat16", args=_args(tmp_path))
    assert next(trainer.teacher_model.parameters()).dtype == torch.bfloat16
    inputs = {**make_inputs(student, batch=2, seq=7), "labels": torch.tensor([0, 1])}
    loss = trainer.compute_loss(student, inputs)
    assert torch.isfinite(loss) and loss.dtype == torch.float32


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"hidden_weight": -1.0}, "hidden_weight"),
    ({"teacher_model": "dense"}, "teacher_model must be a model"),
])
def test_bad_options_are_refused(tmp_path, kwargs, match):
    teacher = make_model("bert")
    student = _student(teacher, hfprune.PruningPlan(heads={0: [0]}))
    options = {"teacher_model": teacher, **kwargs}
    with pytest.raises(ValueError, match=match):
        DistillationTrainer(student, args=_args(tmp_path), **options)


def test_teacher_with_another_output_size_is_refused(tmp_path):
    import transformers

    student = make_model("bert")
    config = copy.deepcopy(student.config)
    config.num_labels = 2
    teacher = transformers.BertForSequenceClassification(config).eval()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ValueError, match=r"output size \(2\) differs from the student's \(3\)"):
        DistillationTrainer(student, teacher_model=teacher, args=_args(tmp_path))
    assert all(torch.equal(student.state_dict()[k], v) for k, v in before.items())
    assert teacher.training is False and all(p.requires_grad for p in teacher.parameters())  # not touched
    llama = make_model("llama")
    with pytest.raises(ValueError, match="output size"):
        DistillationTrainer(student, teacher_model=llama, args=_args(tmp_path))


def test_label_mixing_needs_labels(tmp_path):
    teacher = make_model("bert")
    student = _student(teacher, hfprune.PruningPlan(heads={0: [0]}))
    trainer = DistillationTrainer(student, teacher_model=teacher, alpha=0.5, args=_args(tmp_path))
    with pytest.raises(ValueError, match="no 'labels'"):
        trainer.compute_loss(student, make_inputs(student))


def _train_rows(model, n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        batch = make_inputs(model, batch=1, seq=7, seed=10 + i)
        rows.append({"input_ids": batch["input_ids"][0].tolist(), "attention_mask": [1] * 7, "labels": i % 3})
    return rows


@pytest.mark.parametrize("mode", ["mask", "prune"])
def test_pruning_callback_distills_from_the_model_before_pruning(tmp_path, mode):
    from datasets import Dataset

    model = make_model("bert")
    batches = [{**make_inputs(model, batch=2, seq=7, seed=i), "labels": torch.tensor([0, 1])} for i in range(2)]
    callback = hfprune.PruningCallback(heads_ratio=0.5, at_step=1, mode=mode, dataset=batches,
                                       distill={"alpha": 0.7, "temperature": 3.0})
    trainer = DistillationTrainer(model, args=_args(tmp_path, max_steps=3, per_device_train_batch_size=4),
                                  train_dataset=Dataset.from_list(_train_rows(model)), callbacks=[callback])
    callback.bind(trainer)
    assert trainer.teacher_model is None
    trainer.train()
    teacher = trainer.teacher_model
    assert teacher is not None and teacher is not model
    assert hfprune.model_structure(teacher)["heads"] == [4, 4, 4]  # the copy was taken before the surgery
    assert hfprune.model_structure(model)["heads"] != [4, 4, 4]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(m._forward_pre_hooks for m in teacher.modules())  # no mask on the teacher
    assert (trainer.alpha, trainer.temperature) == (0.7, 3.0)


def test_pruning_callback_distill_needs_a_distillation_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer

    model = make_model("bert")
    callback = hfprune.PruningCallback(heads_ratio=0.5, at_step=1, distill=True)
    trainer = Trainer(model, args=_args(tmp_path, max_steps=1), train_dataset=Dataset.from_list(_train_rows(model)),
                      callbacks=[callback])
    with pytest.raises(ValueError, match="DistillationTrainer"):
        callback.bind(trainer)
    with pytest.raises(ValueError, match="distill.beta"):
        hfprune.PruningCallback(heads_ratio=0.5, distill={"beta": 1.0})
    with pytest.raises(ValueError, match="alpha"):
        hfprune.PruningCallback(heads_ratio=0.5, distill={"alpha": 2.0})


def test_distillation_trainer_is_a_plain_trainer_subclass_at_module_level():
    import transformers

    import hfprune
    import hfprune.recovery.distill as module

    assert module.DistillationTrainer.__module__ == "hfprune.recovery.distill"
    assert module.DistillationTrainer.__qualname__ == "DistillationTrainer"
    assert issubclass(module.DistillationTrainer, transformers.Trainer)
    assert hfprune.DistillationTrainer is module.DistillationTrainer and not hasattr(module, "__getattr__")

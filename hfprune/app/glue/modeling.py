"""Loading the model a recipe starts from, with a classification head of the task's size."""

from __future__ import annotations

import logging
from pathlib import Path

from ...io import load_pruned, require_safetensors
from ...io.names import SPARSE_MANIFEST_NAME as MANIFEST_NAME
from ...structure import get_record
from .tasks import TaskSpec

logger = logging.getLogger("hfprune")


def _head_of(config) -> str | None:
    for name in getattr(config, "architectures", None) or []:
        if name.endswith("ForSequenceClassification"):
            return name
    return None


def _norm(name) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def _output_layer(model, num_labels: int):
    """The last Linear with `num_labels` outputs: the layer that produces the logits (checked by the caller)."""
    from torch import nn

    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    return found[-1] if found else None


def align_labels(model, task: TaskSpec, name_or_path: str = "model") -> bool:
    """Reorder a loaded head whose label names are the task's in another order (e.g. roberta-large-mnli's
    contradiction/neutral/entailment) to the `nyu-mll/glue` label ids; returns whether it was reordered.

    The rows of the output layer are permuted, so logit i means `task.label_names[i]` as in the data and metrics;
    the result is checked on a dummy input. Generic names (`LABEL_0` ...) are taken to be in GLUE order already.

    Raises:
        ValueError: the label names match the task's but the head cannot be reordered (names the orders).
    """
    import torch

    if task.is_regression:
        return False
    id2label = {int(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}
    have = [_norm(id2label.get(i, "")) for i in range(task.num_labels)]
    want = [_norm(n) for n in task.label_names]
    if have == want or sorted(have) != sorted(want):
        return False
    perm = [have.index(n) for n in want]  # new row i = old row perm[i]
    layer = _output_layer(model, task.num_labels)
    probe = {"input_ids": torch.tensor([[1, 2, 3, 4]], device=model.device)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            before = model(**probe).logits
            if layer is not None:
                index = torch.tensor(perm, device=layer.weight.device)
                layer.weight.copy_(layer.weight[index])
                if layer.bias is not None:
                    layer.bias.copy_(layer.bias[index])
                after = model(**probe).logits
    finally:
        model.train(was_training)
    if layer is None or not torch.allclose(after, before[:, perm], atol=1e-5):
        raise ValueError(f"model {name_or_path!r} labels its outputs {[id2label[i] for i in range(task.num_labels)]}, "
                         f"but task {task.name!r} numbers them {list(task.label_names)} (as nyu-mll/glue) and its "
                         "output layer could not be reordered; fine-tune a new head instead")
    model.config.id2label = dict(enumerate(task.label_names))
    model.config.label2id = {n: i for i, n in enumerate(task.label_names)}
    logger.info("%s: output layer reordered from %s to the GLUE label order %s", name_or_path, have, want)
    return True


def _with_pad_id(model, tokenizer):
    # *ForSequenceClassification of decoders reads the logits at the last non-pad token: it needs the pad id.
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_classifier(name_or_path: str, task: TaskSpec, *, allow_new_head: bool):
    """Load `name_or_path` as a sequence classifier for `task` (tokenizer too).

    A checkpoint whose classification head has the task's label count is loaded as it is (its output rows reordered
    when its label names are the task's in another order, see `align_labels`). A base model (no head) or
    a head of another size gets a new head of the right size only when `allow_new_head` (the recipe fine-tunes
    first); otherwise this is an error, since an untrained head's accuracy means nothing. Folders saved after
    `hfprune.prune` are loaded with `hfprune.load_pruned`.

    Returns:
        `(model, tokenizer, head)`: head is `"loaded"` or `"new"`.

    Raises:
        ValueError: the checkpoint has no usable head and `allow_new_head` is False (names the sizes).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        where = "folder" if Path(name_or_path).exists() else "model (not a local folder; Hub lookup failed)"
        raise FileNotFoundError(f"cannot load {where} {name_or_path!r}: {str(err).splitlines()[0]}") from None
    head = _head_of(config)
    fits = head is not None and int(config.num_labels) == task.num_labels
    if not fits and not allow_new_head:
        found = f"a classification head with {config.num_labels} labels" if head else "no classification head"
        raise ValueError(f"model {name_or_path!r} has {found}, but task {task.name!r} needs {task.num_labels}; "
                         "fine-tune from it (--finetune-steps N) to create a new head of the right size, or pass a "
                         f"checkpoint fine-tuned on {task.name}")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder tokenizers (GPT-2, Llama) have none; batches are padded
    labels = {} if task.is_regression else {"id2label": dict(enumerate(task.label_names)),
                                            "label2id": {n: i for i, n in enumerate(task.label_names)}}
    problem = "regression" if task.is_regression else "single_label_classification"
    # A save_compressed folder (bitmask + values, no model.safetensors) loads only through load_pruned too.
    compressed = (Path(name_or_path) / MANIFEST_NAME).is_file()
    if get_record(config) is not None or compressed:
        if not fits:
            raise ValueError(f"model {name_or_path!r} was pruned with a head of {config.num_labels} labels; task "
                             f"{task.name!r} needs {task.num_labels}, and a pruned model cannot get a new head here")
        model = load_pruned(name_or_path)
        align_labels(model, task, name_or_path)
        return _with_pad_id(model, tokenizer), tokenizer, "loaded"
    def from_pretrained(**kwargs):
        require_safetensors(name_or_path)  # a pickle-only folder: refused, naming the file
        try:
            return AutoModelForSequenceClassification.from_pretrained(name_or_path, use_safetensors=True, **kwargs)
        except OSError as err:  # e.g. pickle-only weights (pytorch_model.bin): hfprune reads safetensors only
            raise FileNotFoundError(f"cannot load the weights of {name_or_path!r}: {str(err).splitlines()[0]} "
                                    "(hfprune loads safetensors weights only)") from None

    if fits:
        model = from_pretrained()
        align_labels(model, task, name_or_path)  # a head trained with another label order (roberta-large-mnli)
        if labels and set(model.config.id2label.values()) == {f"LABEL_{i}" for i in range(task.num_labels)}:
            model.config.update(labels)  # generic names only: name them after the task for the model card
        return _with_pad_id(model, tokenizer), tokenizer, "loaded"
    model = from_pretrained(num_labels=task.num_labels, problem_type=problem, ignore_mismatched_sizes=True, **labels)
    logger.info("%s: new %d-label classification head for %s", name_or_path, task.num_labels, task.name)
    return _with_pad_id(model, tokenizer), tokenizer, "new"

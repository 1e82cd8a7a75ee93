"""Where `PruningCallback` scores, and the check at `on_train_begin` that those batches work.

With no `dataset=` given, the callback scores on a seeded slice of the TRAINING set, never the eval set
(`scoring_data="train"`): `num_samples` examples (`DEFAULT_EXAMPLES` = 512 when None; the whole training set when
it is smaller), drawn without replacement by `torch.randperm` seeded with the callback's `seed` (`args.seed` when
None), so every process and every rerun picks the same examples (`plan.meta["scoring_data"]["indices"]`). They go
through the Trainer's own collator (and its column removal), in batches of `per_device_train_batch_size`: the batch
size known to fit a forward + backward.

The slice is *also trained on*: the Trainer has built its training dataloader (and from its length the number of
steps, the learning-rate schedule and the epoch boundaries `at_epoch` counts) before any callback event, so taking
the slice out would mean the callback rewriting the user's training set and schedule. What the issue (18) was about,
choosing the plan on the sentences that are then reported, cannot happen: the eval set is read for scoring only
with `scoring_data="eval"`. A strictly unseen scoring set is `dataset=` with a split of your own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..passes import iter_batches, model_loss, scoring_mode
from .base import dataloader_for

DEFAULT_EXAMPLES = 512


@dataclass(frozen=True)
class ScoringData:
    """The batches a `PruningCallback` scores on, and where they come from (for messages and `plan.meta`)."""

    loader: object
    source: str
    meta: dict = field(default_factory=dict)


def scoring_data(owner: str, config, dataset, trainer, args, kwargs) -> ScoringData:
    """The scoring batches: `dataset` when given, else the training slice or (asked for) the eval dataset."""
    if dataset is not None:
        return ScoringData(dataloader_for(owner, dataset, trainer, kwargs, args), "the dataset given to the callback",
                           {"source": "dataset"})
    if config.scoring_data == "eval":
        return _eval_data(owner, trainer)
    seed = config.seed if config.seed is not None else args.seed
    return training_slice(owner, kwargs.get("train_dataloader"), config.num_samples or DEFAULT_EXAMPLES, seed,
                          args.per_device_train_batch_size)


def _eval_data(owner: str, trainer) -> ScoringData:
    if trainer is None:
        raise ValueError(f"{owner}: scoring_data='eval' needs the trainer, to read its eval dataset: pass "
                         "trainer=trainer or call callback.bind(trainer)")
    if trainer.eval_dataset is None:
        raise ValueError(f"{owner}: scoring_data='eval', but the trainer has no eval_dataset")
    return ScoringData(trainer.get_eval_dataloader(), "the trainer's eval dataset (scoring_data='eval')",
                       {"source": "eval"})


def training_slice(owner: str, train_dataloader, size: int, seed: int, batch_size: int) -> ScoringData:
    """`size` examples of the training dataloader's dataset, chosen by a seeded permutation (see the module doc)."""
    dataset = getattr(train_dataloader, "dataset", None)
    if dataset is None:
        raise ValueError(f"{owner}: no training dataloader to take the scoring slice from; pass dataset=...")
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(f"{owner}: the training dataset ({type(dataset).__name__}) is iterable, so no seeded "
                         "slice can be held apart for scoring; pass dataset=... (a dataset, DataLoader or batches)")
    total = len(dataset)
    if total == 0:
        raise ValueError(f"{owner}: the training dataset is empty, so there is nothing to score on")
    generator = torch.Generator().manual_seed(seed)
    indices = sorted(torch.randperm(total, generator=generator)[:min(size, total)].tolist())
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         collate_fn=train_dataloader.collate_fn)
    source = f"{len(indices)} of {total} training examples, seed {seed}"
    meta = {"source": "train", "examples": len(indices), "of": total, "seed": seed, "indices": indices}
    return ScoringData(loader, source, meta)


def check_scoring_data(owner: str, data: ScoringData, model, need_labels: bool) -> None:
    """Collate the first batch and run it through `model` (no gradient, weights untouched); one error if it fails.

    Catches, before training: an empty dataset, a collator that fails on the examples, missing columns (no labels
    for a loss-based criterion, no inputs the model's forward accepts).
    """
    where = f"{owner}: the scoring data ({data.source})"
    try:
        first = next(iter(data.loader))
    except StopIteration:
        raise ValueError(f"{where} is empty") from None
    except Exception as err:  # noqa: BLE001  (whatever the collator or the dataset raises)
        raise ValueError(f"{where} cannot be collated into a batch: {type(err).__name__}: {err}") from err
    device = next(model.parameters()).device
    try:
        batch = next(iter_batches([first], device, show_progress=False, need_labels=need_labels))
        with scoring_mode(model), torch.no_grad():
            outputs = model(**batch)
        if need_labels:
            model_loss(outputs, 0)
    except Exception as err:  # noqa: BLE001  (missing or unexpected columns surface as many error types)
        keys = sorted(first) if isinstance(first, Mapping) else type(first).__name__
        raise ValueError(f"{where} does not run through {type(model).__name__} (batch keys: {keys}): "
                         f"{type(err).__name__}: {err}") from err

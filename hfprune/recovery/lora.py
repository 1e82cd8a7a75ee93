"""LoRA recovery of a pruned model (peft): low-rank adapters on every attention and FFN projection, trained, then
merged into the weights, so the recovered model is a plain `transformers` model again (no peft modules, no adapter
keys in its checkpoint). LLM-Pruner, Wanda, OWL and SliceGPT recover this way.

`peft` is optional (`pip install peft`): `require_peft` says so in one line before any work.
"""

from __future__ import annotations

from torch import nn

from ..arch import get_adapter


def require_peft(owner: str = "lora") -> None:
    """Raise one clear error when peft is not installed."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ValueError(f"{owner}: LoRA recovery needs peft, which is not installed (pip install peft)") from None


def check_rank(rank, owner: str = "lora") -> int:
    """A LoRA rank: a positive integer."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{owner}: the LoRA rank must be a positive integer, got {rank!r}")
    return rank


def lora_targets(model: nn.Module) -> list[str]:
    """The full module names of every block's attention and FFN projections (the adapter's `linear_paths`)."""
    adapter = get_adapter(model)
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(block.get_submodule(path))] for block in adapter.layers(model) for path in adapter.linear_paths()]


def attach_lora(model: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0):
    """Wrap `model` in a peft LoRA model (rank `rank`, scale `alpha / rank`, default alpha = 2 * rank) on
    `lora_targets(model)`; only the adapters train. Undo with `merge_lora`."""
    require_peft()
    check_rank(rank)
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=dropout,
                        target_modules=lora_targets(model), bias="none")
    return get_peft_model(model, config)


def merge_lora(peft_model) -> nn.Module:
    """Fold the adapters into the weights and return the plain base model (every peft module removed)."""
    model = peft_model.merge_and_unload()
    model.requires_grad_(True)
    model.__dict__.pop("peft_config", None)
    return model


__all__ = ["attach_lora", "check_rank", "lora_targets", "merge_lora", "require_peft"]

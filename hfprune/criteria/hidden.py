"""Hidden-channel importance (the residual width, `PruningPlan(hidden=...)`): one score per channel of the stream.

* `"activation"` (Minitron, Muralidharan et al. 2024; NVIDIA Model-Optimizer's Minitron pruning): the output of
  every block's norms on the stream (pre-attention and pre-FFN norms; BERT's post-sub-layer norms), |value| per
  token, mean over the sequence (padding left out), L2 over the batch (square root of the summed squares, per norm),
  then summed over the norms of all layers. Forward passes only.
* `"magnitude"` (no data): the L2 norm of every weight the channel owns: its embedding columns, its rows in the
  writers (attention / FFN output projections), its columns in every reader (q/k/v, FFN inputs, head), and its
  entries in the norms.
* `"taylor"` (Molchanov et al. 2017, on the hidden gate): |dL/dg_c| per batch, summed over batches and divided by
  the token count; g_c gates channel c everywhere on the stream (`attach_gates(hidden=True)`), so this is the
  first-order change of the loss when the channel is removed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch import get_adapter
from ..passes import all_reduce_sum, forward_passes, gated_passes, sum_per_token
from ..units.hidden import block_norms, norms, readers, width, writers
from . import register_criterion
from ._tokens import reduce_tokens, token_mask


@register_criterion("activation", units=("hidden",), order=50, needs="forward",
                    summary="Minitron: |norm output| per channel, mean over tokens, L2 over the batch, summed over "
                            "layers (Muralidharan 2024)")
def activation_hidden(model: nn.Module, dataloader: Iterable = None, *, plan=None, max_batches=None,
                      num_samples=None, show_progress=True, distributed=True, **common) -> torch.Tensor:
    """`[hidden_size]` float32 Minitron activation scores (higher = more important)."""
    adapter = get_adapter(model)
    sites = block_norms(model, adapter)
    sums: dict[int, torch.Tensor] = {}
    state: dict = {}

    def hook_for(index: int):
        def hook(module, args, output):
            x = (output[0] if isinstance(output, tuple) else output).detach().float()
            if x.dim() == 2:
                x = x.unsqueeze(1)
            keep = token_mask(state["batch"], x.shape[:2])
            per_seq, valid = reduce_tokens(x.abs(), keep.to(x.device), "mean")
            term = per_seq[valid].pow(2).sum(0).cpu()
            sums[index] = sums[index] + term if index in sums else term
        return hook

    def attach() -> list:
        return [m.register_forward_hook(hook_for(i)) for i, m in enumerate(sites)]

    def on_batch(batch: dict) -> None:
        state["batch"] = batch

    forward_passes(model, dataloader, attach=attach, on_batch=on_batch, plan=plan,
                   desc="hidden importance (activation)", max_batches=max_batches, num_samples=num_samples,
                   show_progress=show_progress)
    if len(sums) != len(sites):
        raise RuntimeError("activation importance: no activation reached some of the norms on the residual stream")
    reduced = all_reduce_sum([sums[i] for i in range(len(sites))], enabled=distributed)
    return torch.stack([t.sqrt() for t in reduced]).sum(0).float()


def _out_in(module: nn.Module) -> torch.Tensor:
    weight = module.weight.detach().float()
    return weight if isinstance(module, nn.Linear) else weight.t()  # transformers' Conv1D is (in, out)


@register_criterion("magnitude", units=("hidden",), order=60,
                    summary="L2 norm of every weight a residual channel owns (embeddings, readers, writers, norms)")
@torch.no_grad()
def magnitude_hidden(model: nn.Module, dataloader: Iterable = None, **common) -> torch.Tensor:
    """`[hidden_size]` float32: sqrt of the summed squares of the channel's weights across the model."""
    adapter = get_adapter(model)
    total = torch.zeros(width(model, adapter), dtype=torch.float64)
    base = getattr(model, "base_model", model)
    for path in adapter.hidden_embeddings:
        try:
            total += base.get_submodule(path).weight.detach().double().pow(2).sum(0).cpu()
        except AttributeError:
            continue
    for module in writers(model, adapter):
        total += _out_in(module).double().pow(2).sum(1).cpu()
    for module in readers(model, adapter):
        total += _out_in(module).double().pow(2).sum(0).cpu()
    for module in norms(model, adapter):
        total += module.weight.detach().double().pow(2).cpu()
    return total.sqrt().float()


@register_criterion("taylor", units=("hidden",), order=20, needs="gradients", needs_labels=True,
                    summary="|dL/dg| of each channel's gate on the residual stream, per batch (Molchanov 2017)")
def taylor_hidden(model: nn.Module, dataloader: Iterable, *, plan=None, max_batches=None, num_samples=None,
                  show_progress=True, distributed=True, **common) -> torch.Tensor:
    """`[hidden_size]` float32 first-order scores: sum over batches of |dL/dg_c|, per token."""
    acc: dict = {}

    def on_batch(view) -> None:
        grad = view.gates.of("hidden")["stream"].grad.detach().abs().double().cpu()
        acc["sum"] = acc["sum"] + grad if "sum" in acc else grad

    tokens = gated_passes(model, dataloader, units="hidden", on_batch=on_batch, plan=plan, max_batches=max_batches,
                          num_samples=num_samples, show_progress=show_progress, desc="hidden importance (taylor)")
    if "sum" not in acc:
        raise ValueError("hidden importance (taylor): the dataloader yielded no batch")
    return sum_per_token([acc["sum"]], tokens, distributed)[0][0].float()

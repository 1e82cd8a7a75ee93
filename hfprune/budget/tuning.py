"""Mask tuning: real-valued scales for the kept heads and neurons of each layer, by linear least squares.

Kwon et al. (2022), Section 4.4: after the binary mask is fixed, the kept units of each layer get scales chosen so
that the layer's output matches the unpruned model's on the calibration data. A head's (or neuron's) contribution
to its sub-layer is linear in its mask value, so with C the matrix of per-unit contributions (through the output /
down projection) of the *pruned* model and B the target (the unpruned sub-layer output plus its residual, minus the
pruned model's residual and bias), the scales solve min ||C s - B||^2; the normal equations C^T C and C^T B are
summed over batches (and processes) and solved with `torch.linalg.lstsq`. Layers are tuned in order, on the pruned
model's own inputs, so each layer also corrects the error that reaches it. As in the paper, tuning stops at the
first solution with a scale outside [-10, 10] (or a non-finite one): that and later layers keep scale 1. When the
task head reads only the first token of the last block (a [CLS] classifier,
`TransformerAdapter.reads_first_token_only`), the last layer's neurons are fitted on that token alone, as in the
paper's code for classification: the other positions of that output never reach the loss, and fitting them spends
the few scales on what does not matter.

The scales are folded into the input columns of the output / down projections afterwards (`fold_scales`), so the
pruned model has no extra op.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..arch import get_adapter
from ..masking import Gates
from ..passes import all_reduce_sum, progress
from .blocks import BlockInputs, capture_block_inputs, run_block

BOUND = 10.0


@dataclass
class TuneResult:
    """Scales per layer for the kept heads / neurons (1.0 where untuned) and where tuning stopped, if it did."""

    head_scales: dict[int, torch.Tensor] = field(default_factory=dict)
    neuron_scales: dict[int, torch.Tensor] = field(default_factory=dict)
    stopped_at: dict | None = None
    layers_tuned: int = 0


def _weight_per_input(module: nn.Module) -> torch.Tensor:
    """`[in, out]` view of a Linear or Conv1D weight (row i: what input column i writes)."""
    if isinstance(module, nn.Linear):
        return module.weight.t()
    return module.weight  # transformers' Conv1D stores (in, out)


def _bias(module: nn.Module, like: torch.Tensor) -> torch.Tensor:
    bias = getattr(module, "bias", None)
    return torch.zeros((), dtype=like.dtype, device=like.device) if bias is None else bias.to(like.dtype)


class _Probe:
    """Records, for one block call: the ungated inputs and the outputs of the output / down projections and the
    input of the first FFN input projection. With `stop` set to "attn" or "act" the block call is cut short once
    that value is recorded (the rest of the block is not needed for that system: less compute)."""

    def __init__(self, adapter, block: nn.Module):
        self.seen: dict[str, torch.Tensor] = {}
        self.stop: str | None = None
        out, down, up = adapter.out_proj(block), adapter.ffn_out(block), adapter.ffn_in(block)[0]
        # prepend: run before the gate's own pre-hook, so the inputs are ungated.
        self.handles = [out.register_forward_pre_hook(self._pre("ctx"), prepend=True),
                        out.register_forward_hook(self._post("attn")),
                        down.register_forward_pre_hook(self._pre("act"), prepend=True),
                        down.register_forward_hook(self._post("ffn")),
                        up.register_forward_pre_hook(self._pre("ffn_in"))]

    def _record(self, key: str, value: torch.Tensor) -> None:
        self.seen[key] = value
        if key == self.stop:
            raise _Stop

    def _pre(self, key: str):
        return lambda module, args: self._record(key, args[0])

    def _post(self, key: str):
        return lambda module, args, output: self._record(key, output)

    def run(self, block: nn.Module, item: BlockInputs, stop: str | None) -> None:
        self.stop = stop
        try:
            run_block(block, item)
        except _Stop:
            pass
        finally:
            self.stop = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _Stop(Exception):
    pass


@contextmanager
def _dense(gates: Gates):
    """All gates at 1 inside the block: the unpruned model."""
    saved = [g.detach().clone() for g in gates.parameters()]
    try:
        for g in gates.parameters():
            g.data.fill_(1.0)
        yield
    finally:
        for g, value in zip(gates.parameters(), saved):
            g.data.copy_(value)


def _solve(ata: torch.Tensor, atb: torch.Tensor) -> torch.Tensor | None:
    """lstsq on the normal equations (slightly damped: a unit that contributes nothing leaves them singular)."""
    ata, atb = all_reduce_sum([ata, atb])
    k = ata.shape[0]
    ridge = 1e-10 * float(ata.diagonal().mean().clamp_min(1e-30))
    ata = ata + ridge * torch.eye(k, dtype=ata.dtype, device=ata.device)
    try:
        scales = torch.linalg.lstsq(ata, atb.unsqueeze(1)).solution.squeeze(1)
    except RuntimeError:
        return None
    if not torch.isfinite(scales).all() or scales.abs().max() > BOUND:
        return None
    return scales


def tune_scales(model: nn.Module, batches: list[dict], gates: Gates, kept_heads: list[list[int]],
                kept_neurons: list[list[int]], *, show_progress: bool = False) -> TuneResult:
    """Solve the scales layer by layer and write them into `gates` (the kept units' gate values).

    Args:
        model (`PreTrainedModel`): the unpruned model, with `gates` attached (0 on removed units, 1 on kept ones).
        batches (`list[dict]`): calibration batches.
        gates (`Gates`): head and neuron gates of `model`; updated in place with the scales.
        kept_heads, kept_neurons (`list[list[int]]`): per layer, the units the mask keeps.
    """
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    head_dim = adapter.head_dim(model)
    result = TuneResult()
    first_only = adapter.reads_first_token_only(model)
    with torch.no_grad():
        teacher = capture_block_inputs(model, batches)  # block 0 sees the embeddings, unaffected by the mask
        student = list(teacher)
        bar = progress(len(blocks), "mask tuning", show_progress)
        for layer in range(len(blocks)):
            bar.update(1)
            block = blocks[layer]
            probe = _Probe(adapter, block)
            ffn_rows = _first_token if first_only and layer == len(blocks) - 1 else _all_tokens
            try:
                targets, teacher_next, pre_ln = _teacher_pass(block, probe, gates, teacher, ffn_rows)
                result.stopped_at = _tune_layer(adapter, block, probe, gates, student, targets, pre_ln, layer,
                                                kept_heads[layer], kept_neurons[layer], result, head_dim, ffn_rows)
                if result.stopped_at is not None:
                    break  # as in the paper: this and the later layers keep scale 1
                result.layers_tuned += 1
                if layer + 1 < len(blocks):
                    student = [s.with_hidden(run_block(block, s)) for s in student]
            finally:
                probe.remove()
            teacher = teacher_next if layer + 1 < len(blocks) else []
        bar.close()
    return result


def _all_tokens(valid: torch.Tensor) -> torch.Tensor:
    return valid


def _first_token(valid: torch.Tensor) -> torch.Tensor:
    """Position 0 of every sequence (the [CLS] token a first-token classifier reads)."""
    first = torch.zeros_like(valid)
    first[:, 0] = True
    return first


def _teacher_pass(block, probe, gates, inputs: list[BlockInputs], ffn_rows=_all_tokens):
    """The unpruned block on the unpruned model's inputs: targets of both sub-layers (the FFN's at the positions
    `ffn_rows` selects) and the next inputs."""
    targets, outputs = [], []
    pre_ln = None
    with _dense(gates):
        for item in inputs:
            out = run_block(block, item)
            seen = probe.seen
            attn_sum = seen["attn"] + item.hidden  # sub-layer output plus its residual (the block input)
            if pre_ln is None:
                # Pre-LN blocks (GPT-2, llama, ViT) end in a plain residual add: out = (x + attn) + ffn. Post-LN
                # blocks (BERT) normalise that sum; their FFN residual is the FFN's (normalised) input instead.
                pre_ln = bool(torch.allclose(out - seen["ffn"], attn_sum, rtol=1e-4, atol=1e-4 * float(
                    attn_sum.abs().max().clamp_min(1.0))))
            ffn_residual = attn_sum if pre_ln else seen["ffn_in"]
            valid = item.valid
            targets.append((attn_sum[valid], (seen["ffn"] + ffn_residual)[ffn_rows(valid)]))
            outputs.append(item.with_hidden(out))
    return targets, outputs, pre_ln


def _tune_layer(adapter, block, probe, gates: Gates, student: list[BlockInputs], targets, pre_ln: bool,
                layer: int, heads: list[int], neurons: list[int], result: TuneResult,
                head_dim: int, ffn_rows=_all_tokens) -> dict | None:
    """Tune one layer's heads, then its neurons (on the head-tuned output, at the positions `ffn_rows` selects);
    returns where it stopped, if it did."""
    if heads and layer in gates.head_gates:
        scales = _solve(*_head_system(adapter, block, probe, student, targets, heads, head_dim))
        if scales is None:
            return {"layer": layer, "units": "heads"}
        gates.head_gates[layer].data[heads] = scales.to(gates.head_gates[layer].dtype).to(
            gates.head_gates[layer].device)
        result.head_scales[layer] = scales.float().cpu()
    if neurons and layer in gates.neuron_gates:
        scales = _solve(*_neuron_system(adapter, block, probe, student, targets, neurons, pre_ln, ffn_rows))
        if scales is None:
            return {"layer": layer, "units": "neurons"}
        gates.neuron_gates[layer].data[neurons] = scales.to(gates.neuron_gates[layer].dtype).to(
            gates.neuron_gates[layer].device)
        result.neuron_scales[layer] = scales.float().cpu()
    return None


def _head_system(adapter, block, probe, student, targets, heads, head_dim: int):
    out_proj = adapter.out_proj(block)
    weight = _weight_per_input(out_proj).float()  # [heads * head_dim, hidden]
    per_head = weight.reshape(-1, head_dim, weight.shape[1])[heads]  # [k, head_dim, hidden]
    ata = atb = None
    for item, (attn_target, _) in zip(student, targets):
        probe.run(block, item, stop="attn")
        valid = item.valid
        ctx = probe.seen["ctx"][valid].float().unflatten(-1, (-1, head_dim))[:, heads]  # [T, k, head_dim]
        contrib = torch.einsum("tkd,kdo->tko", ctx, per_head)
        rest = (item.hidden[valid] + _bias(out_proj, item.hidden)).float()
        b = attn_target.float() - rest
        a_part = torch.einsum("tko,tjo->kj", contrib, contrib).double()
        b_part = torch.einsum("tko,to->k", contrib, b).double()
        ata = a_part if ata is None else ata + a_part
        atb = b_part if atb is None else atb + b_part
    return ata, atb


def _neuron_system(adapter, block, probe, student, targets, neurons, pre_ln: bool, rows=_all_tokens):
    down = adapter.ffn_out(block)
    w = _weight_per_input(down).float()[neurons]  # [k, hidden]
    gram = w @ w.t()
    ata = atb = None
    for item, (_, ffn_target) in zip(student, targets):
        probe.run(block, item, stop="act")
        valid = rows(item.valid)
        seen = probe.seen
        act = seen["act"][valid].float()[:, neurons]  # [T, k]
        residual = (seen["attn"] + item.hidden) if pre_ln else seen["ffn_in"]
        b = ffn_target.float() - (residual[valid] + _bias(down, residual)).float()
        a_part = ((act.t() @ act) * gram).double()
        b_part = ((b @ w.t()) * act).sum(0).double()
        ata = a_part if ata is None else ata + a_part
        atb = b_part if atb is None else atb + b_part
    return ata, atb


def scaled_weights(model: nn.Module, head_scales: dict[int, torch.Tensor],
                   neuron_scales: dict[int, torch.Tensor]) -> list[torch.Tensor]:
    """The weights `fold_scales` changes in place: the output / down projections of the tuned layers."""
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    return [*(adapter.out_proj(blocks[layer]).weight for layer in head_scales),
            *(adapter.ffn_out(blocks[layer]).weight for layer in neuron_scales)]


def fold_scales(model: nn.Module, head_scales: dict[int, torch.Tensor], neuron_scales: dict[int, torch.Tensor],
                kept_heads: list[list[int]], kept_neurons: list[list[int]]) -> None:
    """Multiply the input columns of the output / down projections by the scales of their kept units, in place."""
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    head_dim = adapter.head_dim(model)
    with torch.no_grad():
        for layer, scales in head_scales.items():
            weight = _weight_per_input(adapter.out_proj(blocks[layer]))
            for head, scale in zip(kept_heads[layer], scales.tolist()):
                weight[head * head_dim:(head + 1) * head_dim] *= scale
        for layer, scales in neuron_scales.items():
            weight = _weight_per_input(adapter.ffn_out(blocks[layer]))
            index = torch.tensor(kept_neurons[layer], dtype=torch.long, device=weight.device)
            weight[index] *= scales.to(weight.device, weight.dtype).unsqueeze(1)

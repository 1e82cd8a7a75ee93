"""Sums over processes under torch.distributed: every pass that runs on several processes ends here.

Outside torch.distributed (or with one process) every function is a no-op, so a single-process run and a DDP run
share one code path; sums travel in float64 so the reduced statistics match one process seeing all batches.
"""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def is_main_process() -> bool:
    return not is_distributed() or torch.distributed.get_rank() == 0


def _collective_device(device: torch.device) -> torch.device:
    """Where a collective's buffer must live: on the GPU with NCCL, else where the data is."""
    if torch.distributed.get_backend() == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def all_reduce_sum(tensors: list[torch.Tensor], enabled: bool = True) -> list[torch.Tensor]:
    """Sum each tensor over processes (one collective for all of them); a no-op outside torch.distributed.

    Sums travel in float64 so the reduced statistics match a single-process run to rounding. With NCCL the buffer
    must live on the GPU, so it is placed on the device of the first tensor.
    """
    if not enabled or not is_distributed() or not tensors:
        return tensors
    device = _collective_device(tensors[0].device)
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float64) for t in tensors])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape).to(t.device))
        start += t.numel()
    return out


def all_reduce_sum_(tensors: list[torch.Tensor], enabled: bool = True) -> None:
    """Sum each tensor over processes in place, one at a time (no second copy of all of them: weight-sized scores);
    a no-op outside torch.distributed."""
    if not enabled or not is_distributed():
        return
    for tensor in tensors:
        buffer = tensor.to(_collective_device(tensor.device))
        torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
        tensor.copy_(buffer)


def sum_per_token(stats: list[torch.Tensor], tokens: int | float, distributed: bool = True,
                  ) -> tuple[list[torch.Tensor], int]:
    """Sum `stats` and this process's token count over processes (one collective), then divide by the total.

    Every data criterion ends this way: per-process sums over batches become per-token means equal to one process
    scoring all the batches. With no statistic at all (every layer headless: the same on every process) nothing is
    reduced.

    Returns:
        `tuple[list[Tensor], int]`: the float64 means, and the total token count.

    Raises:
        ValueError: the batches hold no non-padding token (the means would be 0 / 0).
    """
    if not stats:
        return [], round(tokens)
    count = torch.tensor(float(tokens), dtype=torch.float64, device=stats[0].device)
    reduced = all_reduce_sum([*stats, count], enabled=distributed)
    total = float(reduced[-1])
    if total <= 0:
        raise ValueError("the batches contain no non-padding token (attention_mask sums to 0)")
    return [r / total for r in reduced[:-1]], round(total)


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate `[n_i, k]` matrices of every process in rank order (n_i may differ); a no-op without
    torch.distributed."""
    if not is_distributed():
        return rows
    dist = torch.distributed
    device = _collective_device(torch.device("cpu"))
    count = torch.tensor([rows.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    most = int(max(int(c) for c in counts))
    padded = torch.zeros(most, rows.shape[1], dtype=torch.float64, device=device)
    padded[:rows.shape[0]] = rows.to(device)
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(c)] for p, c in zip(parts, counts)]).to("cpu")

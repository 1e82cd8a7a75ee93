"""`hfprune info OUT`: per-layer structure, parameters and FLOPs before/after, and what was removed.

Reads only `config.json` (the hfprune structure record): no weights are loaded, the models are built on the meta
device.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...flops import base_model_on_meta, model_costs, pruned_model_on_meta
from ...io import resolve_folder
from ...structure import get_record
from ..common.render import big as _big
from ..glue.results import per_layer_rows


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show what was pruned in a saved model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="OUT", help="a folder saved after hfprune.prune (or a Hub id)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length of the FLOPs count")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(handler=main)


def describe(path: str, seq_len: int = 128) -> dict:
    """Before/after structure, parameter and FLOPs counts of a saved pruned model, from its config alone."""
    from transformers import AutoConfig

    folder = resolve_folder(path)
    if not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json (not a saved model)")
    config = AutoConfig.from_pretrained(folder)
    record = get_record(config)
    if record is None:
        raise ValueError(f"{path}: config.json has no hfprune record (this model was not pruned by hfprune)")
    if "channels" in record:
        return _describe_channels(path, config, record)
    dense = model_costs(base_model_on_meta(config), seq_len)
    pruned = model_costs(pruned_model_on_meta(config), seq_len)
    return {
        "path": str(path), "model_type": config.model_type, "architectures": config.architectures,
        "params_before": dense["params"], "params_after": pruned["params"],
        "flops_before": dense["flops"], "flops_after": pruned["flops"], "seq_len": seq_len,
        "per_layer": per_layer_rows(dense, pruned, record),
        "history": record.get("history", []),
    }


def _describe_channels(path: str, config, record: dict) -> dict:
    """A CNN's channel record: group sizes before / after and parameter counts (the pruned model on meta)."""
    pruned = pruned_model_on_meta(config)
    return {
        "path": str(path), "model_type": config.model_type, "architectures": config.architectures,
        "params_before": record.get("base_params"), "params_after": sum(p.numel() for p in pruned.parameters()),
        "channels": [{"group": name, "before": size, "after": record["channels"].get(name, size)}
                     for name, size in record["base"].items()],
        "plain_config": record.get("plain_config"), "history": record.get("history", []),
    }


def _print_channels(info: dict) -> None:
    before, after = info["params_before"], info["params_after"]
    ratio = f" ({after / before:.1%})" if before else ""
    print(f"{info['path']}: {info['model_type']} ({', '.join(info['architectures'] or [])}); parameters "
          f"{_big(before)} -> {_big(after)}{ratio}; loads with plain from_pretrained: {bool(info['plain_config'])}")
    width = max(len(r["group"]) for r in info["channels"])
    for r in info["channels"]:
        print(f"{r['group']:<{width}}  {r['before']:>5} -> {r['after']:<5}")
    for i, step in enumerate(info["history"]):
        removed = step.get("channels", {})
        print(f"removed (step {i + 1}): {sum(len(v) for v in removed.values())} channels in {len(removed)} groups")


def main(args: argparse.Namespace) -> int:
    if args.seq_len < 1:
        raise ValueError(f"--seq-len must be >= 1, got {args.seq_len}")
    info = describe(args.path, args.seq_len)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if "channels" in info:
        _print_channels(info)
        return 0
    print(f"{info['path']}: {info['model_type']} ({', '.join(info['architectures'] or [])})")
    print(f"parameters {_big(info['params_before'])} -> {_big(info['params_after'])} "
          f"({info['params_after'] / info['params_before']:.1%}); FLOPs per sequence of {info['seq_len']} "
          f"{_big(info['flops_before'])} -> {_big(info['flops_after'])} "
          f"({info['flops_after'] / info['flops_before']:.1%})")
    print(f"{'layer':>5}  {'heads':>9}  {'ffn':>11}  {'params':>15}  {'flops':>15}")
    for r in info["per_layer"]:
        print(f"{r['layer']:>5}  {r['heads_before']:>3} -> {r['heads_after']:<3}  {r['ffn_before']:>4} -> "
              f"{r['ffn_after']:<4}  {_big(r['params_before']):>6} -> {_big(r['params_after']):<6}  "
              f"{_big(r['flops_before']):>6} -> {_big(r['flops_after']):<6}" + ("  removed" if r["removed"] else ""))
    for i, step in enumerate(info["history"]):
        heads = {k: v for k, v in step.get("heads", {}).items()}
        n_neurons = sum(len(v) for v in step.get("neurons", {}).values())
        layers = step.get("layers", [])
        print(f"removed (step {i + 1}): heads {heads or '{}'}; {n_neurons} FFN neurons; layers {layers}")
    return 0

"""int8 / int4 weight-only export in the compressed-tensors format (what llm-compressor writes; vLLM and transformers
read it).

Symmetric round-to-nearest quantization (no calibration data) of every `nn.Linear` inside the transformer blocks:
one scale per output channel (`group_size=None`) or per group of `group_size` input columns. The scales come from
compressed-tensors' own `calculate_qparams` and the integers are packed by its `pack-quantized` compressor, so the
folder is exactly what that package reads back. Embeddings, `lm_head` and task heads stay in the model's dtype.

The folder loads with plain `AutoModelFor*.from_pretrained` (the `compressed-tensors` package installed) whenever the
pruned config is plain (`hfprune.serving.plain`), and with `hfprune.load_pruned` always (dequantized to float).

compressed-tensors 0.20 no longer writes sparse (bitmask) formats, so the unstructured-sparse export stays
hfprune's own (`hfprune.save_compressed`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..arch import get_adapter
from ..io.atomic import atomic_dir, check_output
from .plain import model_card, plain_config

logger = logging.getLogger("hfprune")

FORMAT = "pack-quantized"
_INSTALL = "pip install 'hfprune[serve]'  (or: pip install 'compressed-tensors>=0.20')"


def require_compressed_tensors():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise ImportError("export_compressed_tensors needs the optional package 'compressed-tensors', which is not "
                          f"installed: {_INSTALL}. Nothing was written.") from None
    import compressed_tensors

    return compressed_tensors


def _matches(name: str, patterns) -> bool:
    """compressed-tensors' spelling: a module name, a name suffix after '.', or 're:<regex>'."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif name == pattern or name.endswith("." + pattern):
            return True
    return False


def quantization_targets(model: nn.Module, ignore=("lm_head",)) -> dict[str, nn.Linear]:
    """The `nn.Linear` modules inside the blocks that the export quantizes, by full module name."""
    adapter = get_adapter(model)
    prefix = adapter.layers_path(model)
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.startswith(prefix + ".") and not _matches(name, ignore)
            and module.weight.numel() > 0}


def _check(model: nn.Module, bits, group_size, ignore) -> dict[str, nn.Linear]:
    """Every check before anything is computed or written; returns the modules to quantize."""
    if isinstance(bits, bool) or bits not in (4, 8):
        raise ValueError(f"export_compressed_tensors: bits must be 8 or 4, got {bits!r}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size <= 0):
        raise ValueError(f"export_compressed_tensors: group_size must be None (one scale per output channel) or a "
                         f"positive integer such as 128, got {group_size!r}")
    if isinstance(ignore, str):
        raise ValueError(f"export_compressed_tensors: ignore must be a sequence of module names, got the string "
                         f"{ignore!r} (write ignore=({ignore!r},))")
    targets = quantization_targets(model, ignore)
    if not targets:
        kinds = sorted({type(m).__name__ for m in get_adapter(model).layers(model).modules()
                        if hasattr(m, "weight") and getattr(m.weight, "ndim", 0) == 2})
        raise ValueError(f"export_compressed_tensors: no nn.Linear to quantize in the blocks of "
                         f"{type(model).__name__} (weight modules there: {kinds}; compressed-tensors quantizes "
                         "nn.Linear only, and `ignore` may have excluded the rest)")
    if group_size is not None:
        common = math.gcd(*(m.in_features for m in targets.values()))
        for name, module in targets.items():
            if module.in_features % group_size:
                # compressed-tensors itself warns and vLLM's kernels refuse ragged groups, so this is an error.
                raise ValueError(f"export_compressed_tensors: group_size={group_size} does not divide the input "
                                 f"width {module.in_features} of {name}; every input width here is a multiple of "
                                 f"{common}, so use a divisor of {common}, group_size=None (per channel), or add the "
                                 "layer to ignore")
    return targets


def export_compressed_tensors(model: nn.Module, output_dir: str | os.PathLike, bits: int = 8,
                              group_size: int | None = None, tokenizer=None, ignore=("lm_head",),
                              overwrite: bool = False) -> Path:
    """Write `model` with int8 / int4 weights in the compressed-tensors `pack-quantized` format, atomically.

    Symmetric round-to-nearest, weight-only (activations stay float; W8A16 / W4A16 in llm-compressor's terms). The
    model itself is not changed. Needs the optional package `compressed-tensors` (`pip install 'hfprune[serve]'`).

    Args:
        model (`PreTrainedModel`): a (pruned) model of a supported family, float weights.
        output_dir (`str` or `os.PathLike`): the folder to write (replaced only once complete; an existing folder
            only when an earlier hfprune write made it, or with `overwrite=True`; a file never).
        bits (`int`, defaults to 8): 8 or 4.
        group_size (`int`, *optional*): `None`: one scale per output channel; e.g. 128: one per 128 input columns
            (must divide every quantized layer's input width).
        tokenizer (*optional*): saved beside the model.
        ignore (`tuple[str]`, defaults to `("lm_head",)`): module names (or name suffixes, or `"re:<regex>"`) to
            keep in float. Only Linears inside the blocks are quantized; embeddings, `lm_head` and task heads never
            are, and every float Linear is listed in the config's `ignore`.
        overwrite (`bool`, defaults to `False`): replace an existing folder that hfprune did not write.

    Returns:
        `Path`: `output_dir`.

    Raises:
        ValueError: `bits` not 4 / 8, a `group_size` that does not divide an input width (the layer is named), or no
            Linear to quantize. ImportError: compressed-tensors is not installed. FileExistsError: `output_dir` is
            a file, or a folder hfprune did not write. Nothing is written then.

    Example:
        ```python
        >>> hfprune.export_compressed_tensors(model, "out/int8", bits=8, tokenizer=tokenizer)
        >>> AutoModelForCausalLM.from_pretrained("out/int8")   # plain transformers + compressed-tensors
        ```
    """
    targets = _check(model, bits, group_size, ignore)
    check_output(output_dir, overwrite)
    require_compressed_tensors()
    from ..dequantized import detach_gguf_quantizer

    detach_gguf_quantizer(model)  # a GGUF-loaded model (dense floats) would make save_pretrained refuse
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    scheme = _scheme(bits, group_size)
    state = dict(model.state_dict())
    with torch.no_grad():
        for name, module in targets.items():
            del state[f"{name}.weight"]
            for key, tensor in _compress(module.weight.detach(), scheme).items():
                state[f"{name}.{key}"] = tensor
    floats = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in targets]
    qconfig = QuantizationConfig(config_groups={"group_0": scheme}, ignore=floats, format=FORMAT,
                                 quantization_status=QuantizationStatus.COMPRESSED)
    config, loads = plain_config(model)
    output_dir = Path(output_dir)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, state_dict=state)
        if loads.stand_in:
            config.save_pretrained(tmp)
        ModelCompressor(quantization_config=qconfig).update_config(str(tmp))
        (tmp / "README.md").write_text(_card(model, loads, bits, group_size, len(targets)))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    how = (f"plain from_pretrained as {loads.class_name}" if loads.plain
           else f"hfprune.load_pruned only ({loads.reason})")
    logger.info("%s: %d Linear layers as int%d (%s), loads with %s", output_dir, len(targets), bits,
                f"groups of {group_size}" if group_size else "per channel", how)
    return output_dir


def _scheme(bits: int, group_size: int | None):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, dynamic=False,
                            strategy="group" if group_size else "channel", group_size=group_size)
    return QuantizationScheme(targets=["Linear"], weights=args, format=FORMAT)


def _compress(weight: torch.Tensor, scheme) -> dict[str, torch.Tensor]:
    """Round-to-nearest with min/max scales (compressed-tensors' formula), packed by its own compressor."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    args = scheme.weights
    if args.group_size:
        grouped = weight.reshape(weight.shape[0], -1, args.group_size)
        low, high = grouped.amin(-1), grouped.amax(-1)
    else:
        low, high = weight.amin(1, keepdim=True), weight.amax(1, keepdim=True)
    scale, zero_point = calculate_qparams(low, high, args)
    compressor = BaseCompressor.get_value_from_registry(FORMAT)
    return compressor.compress({"weight": weight, "weight_scale": scale, "weight_zero_point": zero_point}, scheme)


def fake_quantize(weight: torch.Tensor, bits: int = 8, group_size: int | None = None) -> torch.Tensor:
    """The float weight that the exported integers and scales stand for (what a loader dequantizes to)."""
    require_compressed_tensors()
    from compressed_tensors.compressors import BaseCompressor

    scheme = _scheme(bits, group_size)
    packed = _compress(weight, scheme)
    return BaseCompressor.get_value_from_registry(FORMAT).decompress(packed, scheme)["weight"]


def _card(model, loads, bits: int, group_size: int | None, n_layers: int) -> str:
    card = model_card(model, loads)
    where = "per output channel" if group_size is None else f"per group of {group_size} input columns"
    plain = (f"With the `compressed-tensors` package installed, plain `from_pretrained(folder)` builds "
             f"**{loads.class_name}** and dequantizes the weights." if loads.plain
             else "Load it with `hfprune.load_pruned(folder)` (dequantized to float).")
    extra = ["", "## Quantization", "",
             f"int{bits} weights, symmetric round-to-nearest, one scale {where}, in {n_layers} Linear layers of the "
             f"blocks (compressed-tensors `{FORMAT}`; activations stay float). {plain}"]
    return card.rstrip("\n") + "\n" + "\n".join(extra) + "\n"


# ----- load_pruned for compressed-tensors folders (needed where the pruned config is not plain) ---------------------
def is_compressed_tensors_folder(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    quant = json.loads(config.read_text()).get("quantization_config") or {}
    return quant.get("quant_method") == "compressed-tensors"


def load_compressed_tensors(folder: Path, source: str, dtype=None, attn_implementation=None,
                            config_kwargs: dict | None = None) -> nn.Module:
    """Rebuild (pruned shapes from the hfprune record) and dequantize a compressed-tensors folder. The loader of the
    `compressed-tensors` entry of `hfprune.io.FORMATS`, so `hfprune.load_pruned(folder)` calls it.

    Returns:
        The model in eval mode, float weights equal to the stored integers times their scales, no quantization
        config left on it (saving it writes a plain float model).
    """
    require_compressed_tensors()
    from compressed_tensors.quantization import QuantizationConfig

    from ..io.folders import read_safetensors
    from ..io.rebuild import build_model, load_config
    from .plain import original_config

    config_kwargs = dict(config_kwargs or {})
    raw = json.loads((Path(folder) / "config.json").read_text())["quantization_config"]
    qconfig = QuantizationConfig.model_validate({k: v for k, v in raw.items() if k in QuantizationConfig.model_fields})
    config = original_config(load_config(folder, attn_implementation, **config_kwargs), overrides=config_kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = _dequantize(read_safetensors(Path(folder)), qconfig, source)
    return build_model(config, state, source, dtype)


def _dequantize(state: dict[str, torch.Tensor], qconfig, source: str) -> dict[str, torch.Tensor]:
    from compressed_tensors.compressors import BaseCompressor

    groups = list(qconfig.config_groups.values())
    if len(groups) != 1 or (groups[0].format or qconfig.format) != FORMAT:
        raise ValueError(f"{source}: load_pruned reads compressed-tensors folders with one {FORMAT!r} group (as "
                         "export_compressed_tensors writes); this one has "
                         f"{[(g.format or qconfig.format) for g in groups]}. Load it with plain from_pretrained.")
    scheme = groups[0]
    compressor = BaseCompressor.get_value_from_registry(FORMAT)
    out = {k: v for k, v in state.items() if not k.endswith(("weight_packed", "weight_scale", "weight_shape"))}
    for key in state:
        if key.endswith(".weight_packed"):
            prefix = key[: -len("weight_packed")]
            local = {n: state[prefix + n] for n in ("weight_packed", "weight_scale", "weight_shape")}
            weight = compressor.decompress(local, scheme)["weight"]
            out[prefix + "weight"] = weight.to(local["weight_scale"].dtype)
    return out

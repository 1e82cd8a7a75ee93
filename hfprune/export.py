"""Saving and loading pruned models: safetensors weights + a config carrying the `hfprune` structure record."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .dequantized import detach_gguf_quantizer
from .structure import get_record

# Files a loader may need; nothing else is downloaded for a Hub id.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*.md"]
# Hook for other on-disk formats (the compressed sparse export registers itself here).
FOLDER_LOADERS: list = []


def save_pruned(model: nn.Module, output_dir: str | os.PathLike, tokenizer=None, **save_kwargs) -> Path:
    """Save `model` (and `tokenizer`) to `output_dir` atomically: written to a temporary folder, then moved.

    Plain `model.save_pretrained(output_dir)` works too; this adds the all-or-nothing write, so an interrupted save
    never leaves a half-written folder behind, and refuses non-safetensors serialisation.
    """
    if save_kwargs.get("safe_serialization") is False:
        raise ValueError("hfprune saves weights only as safetensors; drop safe_serialization=False")
    output_dir = Path(output_dir)
    detach_gguf_quantizer(model)  # a GGUF-loaded model holds dense floats; save it as a plain checkpoint
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return output_dir


@contextmanager
def atomic_dir(output_dir: str | os.PathLike):
    """Yield a temporary folder next to `output_dir`; on success it replaces `output_dir`, on error it is removed.

    Every writer in hfprune goes through this, so an interrupted run never leaves a half-written folder.
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its folder is owner-only (0700), and it becomes the output; mkdir follows the umask.
    tmp = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing what was there only once `src` is complete."""
    if dst.exists():
        backup = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(backup)
        src.rename(dst)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        src.rename(dst)


def resolve_folder(path_or_id: str | os.PathLike, **hub_kwargs) -> Path:
    """A local folder for `path_or_id`: the folder itself, or a Hub snapshot of the files a loader needs.

    Raises:
        FileNotFoundError: neither a local folder nor a Hub repo that can be fetched now (offline mode, no network,
            no such repo or no access); the message names the repo id and suggests a local path.
    """
    path = Path(path_or_id)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; load_pruned expects a folder saved by save_pretrained or a Hub id")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = str(path_or_id)
    keys = ("revision", "token", "cache_dir", "local_files_only")
    try:
        return Path(snapshot_download(repo, allow_patterns=_HUB_PATTERNS,
                                      **{k: v for k, v in hub_kwargs.items() if k in keys}))
    except HFValidationError:
        raise FileNotFoundError(f"{repo!r} is not a local folder, nor a Hub repo id of the form 'user/name'") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{repo!r} is not a local folder, and the Hub has no repo {repo!r} that this token "
                                "can read (private repos need token=...)") from None
    except LocalEntryNotFoundError as err:
        offline = constants.is_offline_mode() or hub_kwargs.get("local_files_only")
        why = "offline mode is on (HF_HUB_OFFLINE)" if offline else f"cannot reach {constants.ENDPOINT}"
        raise FileNotFoundError(
            f"{repo!r} is not a local folder, and the Hub repo {repo!r} cannot be downloaded ({why}) nor is it in the "
            "local cache; pass the path of a folder saved by save_pretrained, or go online once to cache it"
        ) from err


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint. Pickle checkpoints are refused."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"no model.safetensors in {folder} (found: {found}); hfprune never loads pickle")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(folder / shard)))
    return state


def model_class_for(config):
    """The transformers class named first in `config.architectures`."""
    import transformers

    names = getattr(config, "architectures", None) or []
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise ValueError(f"config.architectures={names!r} names no class in transformers; cannot rebuild the model")


def to_model_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map checkpoint names to the model's own names.

    transformers v5 saves some families under legacy names (ViT: `encoder.layer.N.attention.query`) and renames them
    while loading; we apply the same renamings, through the helpers `from_pretrained` itself uses.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # an older/newer layout of transformers' internals: names are taken as they are
        return state
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    expected = model.state_dict()
    out = {}
    for key, tensor in state.items():
        new_key, converter = rename_source_key(key, renamings, converters, getattr(model, "base_model_prefix", None),
                                               expected)
        if converter is not None:
            raise NotImplementedError(f"tensor {key!r} needs a weight conversion that load_pruned does not support")
        out[new_key] = tensor
    return out


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model`, refusing any missing, unexpected or shape-mismatched tensor (by name)."""
    expected = model.state_dict()
    for name, tensor in state.items():
        if name not in expected:
            raise ValueError(f"{source}: tensor {name!r} does not exist in the rebuilt {type(model).__name__}")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)} but the recorded structure expects "
                f"{tuple(expected[name].shape)}; the checkpoint does not match its hfprune record"
            )
    # Tied parameters are saved once; a missing name is fine only if it shares storage with a loaded one.
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    missing = [n for n in expected if n not in state]
    persistent_buffers = {n for n, _ in model.named_buffers()}
    for name in missing:
        tied = [o for names in owners.values() if name in names for o in names if o in state]
        if not tied and name not in persistent_buffers:
            raise ValueError(f"{source}: tensor {name!r} is missing from the checkpoint")
    model.load_state_dict(state, strict=False)


def _device_from(device, device_map):
    """One device for the whole model: `device`, or a `device_map` that names a single device ("auto": the GPU if
    there is one). Sharding a pruned model over devices is not supported, and saying so beats ignoring it."""
    if device_map is None:
        return device
    if device is not None:
        raise ValueError("load_pruned: pass either device or device_map, not both")
    if isinstance(device_map, (str, torch.device)):
        if str(device_map) == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device_map
    raise ValueError(f"load_pruned: device_map={device_map!r} is not supported; use device='cuda' (or 'cpu', 'auto'), "
                     "the whole model goes to one device")


def load_pruned(path_or_id: str | os.PathLike, **from_pretrained_kwargs) -> nn.Module:
    """Load a model saved after `hfprune.prune` (local folder or Hub id), rebuilding its pruned shapes.

    The Auto class is taken from `config.architectures`; weights are read only from safetensors.

    Args:
        path_or_id (`str` or `os.PathLike`): a folder written by `save_pretrained` / `save_pruned`, or a Hub repo id.
        from_pretrained_kwargs: `revision`, `token`, `cache_dir`, `local_files_only` (Hub), `dtype` /
            `torch_dtype` (default and `"auto"`: the dtype it was saved in), `device` (str) or a one-device
            `device_map` ("auto", "cuda", ...), `attn_implementation`, and config overrides (as for `AutoConfig`).

    Returns:
        The pruned model, in eval mode, with the same logits as when it was saved.

    Raises:
        ValueError: the folder carries no hfprune record, or a tensor does not match the recorded structure.

    Example:
        ```python
        >>> model = hfprune.load_pruned("out/pruned")           # or "user/minilm-sst2-pruned"
        ```
    """
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    kwargs = dict(from_pretrained_kwargs)
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    device = _device_from(kwargs.pop("device", None), kwargs.pop("device_map", None))
    hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    folder = resolve_folder(path_or_id, **hub_kwargs)
    # --- hook for hfprune.sparsity: a compressed sparse folder carries this marker; importing the package
    # registers its loader in FOLDER_LOADERS, so users need not import hfprune.sparsity themselves.
    if (folder / "hfprune_sparse.json").is_file():
        import hfprune.sparsity  # noqa: F401
    # --- end of hook
    for loader in FOLDER_LOADERS:
        model = loader(folder, dtype=None if dtype == "auto" else dtype, **kwargs)
        if model is not None:
            return model.to(device) if device else model

    attn_implementation = kwargs.pop("attn_implementation", None)
    config = AutoConfig.from_pretrained(folder, **kwargs)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    if dtype is None or dtype == "auto":
        # As transformers v5's from_pretrained: the dtype the model was saved in (a bf16 model stays bf16).
        saved = getattr(config, "dtype", None)
        dtype = saved if saved not in (None, "auto") else None
    record = get_record(config)
    if record is None:
        raise ValueError(
            f"{path_or_id}: config.json has no 'hfprune' record, so this is not a model saved after hfprune.prune "
            "(load an unpruned model with transformers' from_pretrained)"
        )
    from .surgery.core import apply_structure

    state = read_safetensors(folder)  # fails early (and never on pickle) before any model is built
    cls = model_class_for(config)
    with no_init_weights():
        model = cls(config)  # weights are overwritten below, so skip their random init
    apply_structure(model, record)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # before loading, so a tied tensor saved once is recognised as present
    load_state_strict(model, to_model_keys(model, state), str(path_or_id))
    if dtype is not None:
        model = model.to(dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if device:
        model = model.to(device)
    return model.eval()

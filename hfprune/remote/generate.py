"""Generate the `trust_remote_code` modeling file that lets plain transformers load a pruned folder.

The pruned shapes are found by building the stock model and the hfprune-rebuilt model on the meta device (no
memory, no weights) and recording what differs: parameter shapes, the scalar attributes the forward pass reads
(`num_attention_heads`, `split_size`, `in_features`, GPT-2's per-layer `scaling`, ...) and the stand-in modules of
attention blocks with no head left. The generated file replays exactly that difference, so it matches
`hfprune.load_pruned` by construction, for every family hfprune supports, without repeating any family knowledge.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from pathlib import Path

import torch
from torch import nn

from ..structure import apply_structure
from ..units.headless import HeadlessAttention
from ..units.slicing import ZeroWidthConv1D

MODELING_FILE = "modeling_hfprune.py"
_TEMPLATE = Path(__file__).with_name("modeling_template.py")
_SPEC_LINE = '_SPEC: dict = json.loads("{}")'
_SCALARS = (bool, int, float, str, type(None))
_MISSING = object()


def _stand_in(module: nn.Module) -> tuple[str, dict] | None:
    """The generated file's name for an hfprune stand-in module and the arguments that rebuild it."""
    if isinstance(module, HeadlessAttention):
        return "headless", {"head_dim": module.head_dim, "layer_idx": module.layer_idx,
                            "out_proj_name": module.out_proj_name}
    if isinstance(module, ZeroWidthConv1D):
        return "zero_width_conv1d", {}
    return None


def _scalars(module: nn.Module) -> dict:
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, _SCALARS)}


def _tensor_shapes(model: nn.Module) -> dict[str, list[int]]:
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {name: list(t.shape) for name, t in named}


def _build_pair(cls: type, config, record: dict) -> tuple[nn.Module, nn.Module]:
    """The stock model and the hfprune-rebuilt pruned model of `cls`, both on the meta device."""
    with torch.device("meta"):
        stock = cls(config)
        pruned = cls(config)
    apply_structure(pruned, record)
    return stock, pruned


def class_spec(cls: type, config, record: dict) -> dict:
    """What the generated `__init__` of `cls` changes after building the stock model.

    Returns:
        `dict` with `replace` ([path, kind, kwargs] parents first), `tensors` ({name: shape}) and `attrs`
        ({module path: {attribute: value}}).

    Raises:
        NotImplementedError: the rebuilt model holds a module type the generated file cannot reproduce (named).
    """
    stock, pruned = _build_pair(cls, config, record)
    stock_modules = dict(stock.named_modules())
    replace, attrs, replaced = [], {}, []
    for path, module in pruned.named_modules():
        before = stock_modules.get(path)
        if before is not None and type(before) is type(module):
            old = _scalars(before)
            changed = {k: v for k, v in _scalars(module).items() if old.get(k, _MISSING) != v}
            if changed:
                attrs[path] = changed
            continue
        found = _stand_in(module)
        if found is None:
            raise NotImplementedError(
                f"{cls.__name__}: module {path!r} is a {type(module).__name__} after hfprune rebuilt it (stock: "
                f"{type(before).__name__}); the remote-code file only knows hfprune's stand-in modules"
            )
        replace.append([path, found[0], found[1]])
        replaced.append(path)
    stock_shapes, pruned_shapes = _tensor_shapes(stock), _tensor_shapes(pruned)
    tensors = {name: shape for name, shape in pruned_shapes.items() if stock_shapes.get(name) != shape}
    return {"replace": replace, "tensors": tensors, "attrs": attrs}


# The Auto classes an auto_map may point at, each with the public names dict of
# `transformers.models.auto.modeling_auto` that lists its class per model_type (transformers links the two only
# through private attributes; tests/test_remote.py checks this table against that wiring).
AUTO_CLASS_MAPPINGS = {
    "AutoModel": "MODEL_MAPPING_NAMES",
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForImageClassification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForMaskedImageModeling": "MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "AutoModelForMultipleChoice": "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES",
    "AutoModelForNextSentencePrediction": "MODEL_FOR_NEXT_SENTENCE_PREDICTION_MAPPING_NAMES",
    "AutoModelForPreTraining": "MODEL_FOR_PRETRAINING_MAPPING_NAMES",
    "AutoModelForQuestionAnswering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "AutoModelForSeq2SeqLM": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTextEncoding": "MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
}


def auto_class_names(auto_class: str) -> dict:
    """model_type -> class name(s) for `auto_class` (e.g. "AutoModel"), from transformers' public names dicts."""
    from transformers.models.auto import modeling_auto

    names = getattr(modeling_auto, AUTO_CLASS_MAPPINGS[auto_class], None)
    return names if isinstance(names, dict) else {}


def auto_classes_for(model_type: str, class_name: str) -> list[str]:
    """The transformers Auto classes whose mapping lists `class_name` for `model_type` (e.g. AutoModelForCausalLM)."""
    found = []
    for auto_class in sorted(AUTO_CLASS_MAPPINGS):
        entry = auto_class_names(auto_class).get(model_type)
        if entry == class_name or (isinstance(entry, (list, tuple)) and class_name in entry):
            found.append(auto_class)
    return found


def render(spec: dict, class_names: list[str]) -> str:
    """The generated modeling file: the template with `spec` as data and one class per name."""
    from .. import __version__

    template = _TEMPLATE.read_text()
    if template.count(_SPEC_LINE) != 1:
        raise RuntimeError(f"{_TEMPLATE} must contain the line {_SPEC_LINE!r} exactly once")
    data = _format_spec(spec)
    if '"""' in data:
        raise ValueError('the pruned structure contains \'"""\' in a name; cannot embed it in the modeling file')
    header = f"# Generated by hfprune {__version__}; regenerate with hfprune.remote.add_remote_code().\n"
    text = header + template.replace(_SPEC_LINE, f'_SPEC: dict = json.loads(r"""\n{data}\n""")')
    for name in class_names:
        text += (
            f"\n\nclass {name}(_StockCode, transformers.{name}):\n"
            f'    """`transformers.{name}` with the pruned shapes of `_SPEC`."""\n\n'
            f"    def __init__(self, config, *args, **kwargs):\n"
            f"        super().__init__(config, *args, **kwargs)\n"
            f"        _reshape(self, config, {name!r})\n"
        )
    return text


def _format_spec(spec: dict) -> str:
    # One entry per line: the file stays readable (and diffable) for models with many layers.
    lines = ["{", f' "record_layers": {json.dumps(spec["record_layers"])},', ' "classes": {']
    classes = list(spec["classes"].items())
    for i, (name, cspec) in enumerate(classes):
        lines.append(f"  {json.dumps(name)}: {{")
        for j, key in enumerate(("replace", "tensors", "attrs")):
            value = cspec[key]
            items = [json.dumps(v) for v in value] if isinstance(value, list) else \
                [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            close = ("]" if isinstance(value, list) else "}") + ("," if j < 2 else "")
            opening = "[" if isinstance(value, list) else "{"
            if not items:
                lines.append(f"   {json.dumps(key)}: {opening}{close}")
                continue
            lines.append(f"   {json.dumps(key)}: {opening}")
            lines.extend(f"    {item}{',' if k < len(items) - 1 else ''}" for k, item in enumerate(items))
            lines.append(f"   {close}")
        lines.append("  }" + ("," if i < len(classes) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines)


def _import_file(path: Path):
    name = f"_hfprune_remote_check_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclass/annotation machinery looks the module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def _describe(model: nn.Module) -> dict:
    return {
        "tensors": _tensor_shapes(model),
        "modules": {p: type(m).__name__ for p, m in model.named_modules()},
        "attrs": {p: _scalars(m) for p, m in model.named_modules()},
    }


def verify(path: Path, config, record: dict, class_names: list[str]) -> None:
    """Build every class of the generated file on the meta device and compare it with hfprune's own rebuild.

    Raises:
        RuntimeError: a tensor shape, module type or attribute differs (named).
    """
    module = _import_file(path)
    for name in class_names:
        import transformers

        expected = _describe(_build_pair(getattr(transformers, name), config, record)[1])
        with torch.device("meta"):
            got = _describe(getattr(module, name)(config))
        for part in ("tensors", "modules", "attrs"):
            if got[part] != expected[part]:
                keys = sorted(set(got[part]) | set(expected[part]))
                first = next(k for k in keys if got[part].get(k) != expected[part].get(k))
                raise RuntimeError(
                    f"generated {path.name} builds {name} with {part}[{first!r}] = {got[part].get(first)!r} but "
                    f"hfprune rebuilds {expected[part].get(first)!r}"
                )

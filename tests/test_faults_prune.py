"""Nothing lost in the core: `prune`, `mask`, compensation and `prune_to_budget`'s surgery are all or nothing.

A failure (and a KeyboardInterrupt) is injected at every step of `prune`, for every family and every unit kind it
supports, and the model is found bit-identical afterwards: the same module objects, state dict tensors (values and
dtypes), config dict (the `hfprune` record included), hooks and forward output. The steps are enumerated
generically, so a new unit kind is covered without a change here:

* on entry to every registered unit kind's `check_removal`, `remove`, `write_record` and `write_config`, and to
  the config / record writer (`sync_config`);
* on the k-th call, for every k a clean run makes, of `nn.Module.__setattr__` and `PreTrainedConfig.__setattr__`
  (every replaced parameter, buffer, module and attribute, every config key) and of the slicing helpers of
  `hfprune.units` (wherever a unit module imported them).
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from cnn_models import FAMILIES as CNN_FAMILIES
from cnn_models import make_cnn, pixel_batch, random_channel_plan
from conftest import logits_of, make_inputs, make_model
from torch import nn
from transformers import PreTrainedConfig

import hfprune
from hfprune import PruningPlan, surgery
from hfprune.units import kind_names
from hfprune.units.registry import get_kind

FAMILIES = ["bert", "distilbert", "vit", "llama", "qwen3", "gpt2"]
SLICING = ("select_outputs", "select_inputs", "slice_op", "set_submodule", "remove_layers", "reshape_attention",
           "reshape_ffn", "zero_width_safe")
EXCEPTIONS = [RuntimeError, KeyboardInterrupt]


class Fault(RuntimeError):
    pass


# ----- the fingerprint of a model ----------------------------------------------------------------------------------
def fingerprint(model: nn.Module) -> dict:
    """Everything a failed prune must leave as it was (tensors cloned; module and hook objects by identity)."""
    hooks = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr.endswith("hooks") and isinstance(value, dict):
                hooks[(name, attr)] = list(value.items())
    return {
        "modules": [(name, id(m), type(m)) for name, m in model.named_modules()],
        "state": {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()},
        "config": model.config.to_dict(),
        "hooks": hooks,
        "training": [m.training for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict, inputs: dict | None = None,
                     logits: torch.Tensor | None = None) -> None:
    after = fingerprint(model)
    assert after["modules"] == before["modules"]
    assert after["state"].keys() == before["state"].keys()
    for key, (dtype, tensor) in before["state"].items():
        assert after["state"][key][0] == dtype and torch.equal(after["state"][key][1], tensor), key
    assert after["config"] == before["config"]
    assert after["hooks"] == before["hooks"]
    assert after["training"] == before["training"]
    if inputs is not None:
        assert torch.equal(logits_of(model, inputs), logits)


# ----- the steps of a run ------------------------------------------------------------------------------------------
class Counter:
    """Wraps callables; counts their calls and raises `exc` on the `at`-th (1-based) one, before the call."""

    def __init__(self, at: int | None = None, exc: type[BaseException] = Fault):
        self.at, self.exc, self.calls = at, exc, 0

    def wrap(self, real, counts=lambda args: True):
        def wrapped(*args, **kwargs):
            if not counts(args):
                return real(*args, **kwargs)
            self.calls += 1
            if self.calls == self.at:
                raise self.exc(f"injected at step {self.calls}")
            return real(*args, **kwargs)

        return wrapped


def _patch_setattr(mp, counter: Counter, model: nn.Module) -> None:
    """Attribute writes on the model's own modules and config (not on a scratch model built to test a config)."""
    owned = {id(m) for m in model.modules()} | {id(model.config)}
    counts = lambda args: id(args[0]) in owned  # noqa: E731
    mp.setattr(nn.Module, "__setattr__", counter.wrap(nn.Module.__setattr__, counts))
    mp.setattr(PreTrainedConfig, "__setattr__", counter.wrap(PreTrainedConfig.__setattr__, counts))


def _patch_slicing(mp, counter: Counter, model: nn.Module) -> None:
    """Every slicing helper, in every module of `hfprune.units` / `hfprune.arch` that holds it (one counter)."""
    wrapped = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith(("hfprune.units", "hfprune.arch")) or module is None:
            continue
        for helper in SLICING:
            real = vars(module).get(helper)
            if callable(real):
                wrapped.setdefault(id(real), counter.wrap(real))
                mp.setattr(module, helper, wrapped[id(real)])


def entry_faults(plan: PruningPlan, kinds) -> list[str]:
    """`kind.check_removal` / `kind.remove` of every kind the plan removes, `kind.write_record` /
    `kind.write_config` of every kind the family has, and the record writer's two calls."""
    return ([f"{kind}.{method}" for kind in plan.kinds() for method in ("check_removal", "remove")]
            + [f"{kind}.{method}" for kind in kinds for method in ("write_record", "write_config")]
            + ["sync_config#1", "sync_config#2"])


def _patch_entry(mp, fault: str, exc) -> None:
    if fault.startswith("sync_config#"):
        counter = Counter(int(fault[-1]), exc)
        mp.setattr(surgery, "sync_config", counter.wrap(surgery.sync_config))
        return
    kind_name, method = fault.split(".")
    kind = get_kind(kind_name)
    mp.setattr(kind, method, Counter(1, exc).wrap(getattr(kind, method)))


def count_steps(model: nn.Module, run, patch) -> int:
    """How many calls `patch` sees in a clean `run(model)` (on a model built beforehand, outside the count)."""
    counter = Counter()
    with pytest.MonkeyPatch.context() as mp:
        patch(mp, counter, model)
        run(model)
    return counter.calls


def inject_everywhere(make, plan, inputs, kinds, run=None, both: bool = True) -> int:
    """Fail `run(model)` (default: prune with `plan`) at every step and find the model unchanged each time; the
    clean run still works afterwards. Every entry fault is injected as both exception types; the k-th-call faults
    too with `both`, else alternately (odd k a failure, even k a KeyboardInterrupt: every step gets one, and both
    kinds run through every part of the run). Returns the number of faults injected."""
    run = run or (lambda model: hfprune.prune(model, plan))
    model = make()
    before, logits = fingerprint(model), logits_of(model, inputs)
    faults = [(exc, lambda mp, f=fault, e=exc: _patch_entry(mp, f, e))
              for exc in EXCEPTIONS for fault in entry_faults(plan, kinds)]
    for patch in (_patch_setattr, _patch_slicing):
        steps = count_steps(make(), run, patch)
        assert steps > 0
        for k in range(1, steps + 1):
            for exc in EXCEPTIONS if both else [EXCEPTIONS[(k + 1) % 2]]:
                faults.append((exc, lambda mp, p=patch, k=k, e=exc: p(mp, Counter(k, e), model)))
    for exc, fault in faults:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(exc, match="injected"):
            fault(mp)
            run(model)
        assert_unchanged(model, before, inputs, logits)
    run(model)  # the same model still prunes cleanly afterwards
    assert not torch.equal(logits_of(model, inputs), logits)
    return len(faults)


def _transformer_plan(model) -> PruningPlan:
    """Every unit kind the family supports, including a layer losing all its heads and one all its neurons."""
    adapter = hfprune.get_adapter(model)
    units = {"heads": {0: [1, 3], 1: list(range(4))}, "neurons": {1: list(range(0, 48, 3)), 2: list(range(48))},
             "layers": [2], "hidden": [0, 5, 17]}
    return PruningPlan(**{k: v for k, v in units.items() if k in adapter.unit_kinds})


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_is_all_or_nothing_at_every_step(family):
    model = make_model(family)
    kinds = hfprune.get_adapter(model).unit_kinds
    assert set(kinds) <= set(kind_names())
    plan = _transformer_plan(model)
    missing = set(kinds) - set(plan.kinds())
    assert not missing, f"add an entry for unit kind(s) {sorted(missing)} to _transformer_plan"
    injected = inject_everywhere(lambda: make_model(family), plan, make_inputs(model), kinds)
    assert injected > 50


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_prune_with_flap_compensation_is_all_or_nothing_at_every_step(family):
    model = make_model(family)  # Llama's projections get biases through its config flags: new tensors and keys
    plan = _transformer_plan(model)
    plan.layers = []
    comp = hfprune.measure_compensation(model, plan, [make_inputs(model, batch=4, seed=s) for s in range(2)])
    kinds = hfprune.get_adapter(model).unit_kinds
    injected = inject_everywhere(lambda: make_model(family), plan, make_inputs(model), kinds,
                                 run=lambda m: hfprune.prune(m, plan, compensate=comp), both=False)
    assert injected > 50


def _two_groups(model) -> PruningPlan:
    """Channels of the first and the last free group and of the first and the last coupled one (every op kind)."""
    groups = hfprune.channel_groups(model)
    chosen = {}
    for which in ("inner", "coupled"):
        found = list(random_channel_plan(groups, seed=0, which=which).items())
        chosen.update(dict(found[:1] + found[-1:]))
    return PruningPlan(channels=chosen)


@pytest.mark.parametrize("family", CNN_FAMILIES)
def test_prune_with_compensation_is_all_or_nothing_at_every_step(family):
    model = make_cnn(family)
    plan = _two_groups(model)
    comp = hfprune.channel_compensation(model, plan, [pixel_batch()])
    inputs = {"pixel_values": pixel_batch()["pixel_values"]}
    kinds = hfprune.get_adapter(model).unit_kinds
    injected = inject_everywhere(lambda: make_cnn(family), plan, inputs, kinds,
                                 run=lambda m: hfprune.prune(m, plan, compensate=comp), both=False)
    assert injected > 20


# ----- mask -------------------------------------------------------------------------------------------------------
def _patch_hooks(mp, counter: Counter, model: nn.Module) -> None:
    for name in ("register_forward_pre_hook", "register_forward_hook"):
        mp.setattr(nn.Module, name, counter.wrap(getattr(nn.Module, name)))


def _fold_then(exc):
    real = hfprune.Compensation.fold

    def fold(self, model):
        real(self, model)  # the offsets are in: the failure comes after the in-place change
        raise exc("injected after the fold")

    return fold


@pytest.mark.parametrize("exc", EXCEPTIONS)
@pytest.mark.parametrize("family", ["bert", "llama", "gpt2", "resnet_basic", "mobilenet_v2"])
def test_mask_is_all_or_nothing_at_every_hook(family, exc):
    cnn = family in CNN_FAMILIES
    model = make_cnn(family) if cnn else make_model(family)
    if cnn:
        plan = PruningPlan(channels=random_channel_plan(hfprune.channel_groups(model), seed=1))
        comp = hfprune.channel_compensation(model, plan, [pixel_batch()])
        inputs = {"pixel_values": pixel_batch()["pixel_values"]}
    else:
        plan, comp, inputs = _transformer_plan(model), None, make_inputs(model)
    before, logits = fingerprint(model), logits_of(model, inputs)
    n = count_steps(model, lambda m: hfprune.mask(m, plan, compensate=comp).remove(), _patch_hooks)
    assert n > 1
    for k in range(1, n + 1):
        with pytest.MonkeyPatch.context() as mp, pytest.raises(exc, match="injected"):
            _patch_hooks(mp, Counter(k, exc), model)
            hfprune.mask(model, plan, compensate=comp)
        assert_unchanged(model, before, inputs, logits)
    if cnn:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(exc, match="injected"):
            mp.setattr(hfprune.Compensation, "fold", _fold_then(exc))
            hfprune.mask(model, plan, compensate=comp)
        assert_unchanged(model, before, inputs, logits)


@pytest.mark.parametrize("exc", EXCEPTIONS)
@pytest.mark.parametrize("sequential", [False, True])
def test_measuring_compensation_is_all_or_nothing(sequential, exc):
    model = make_cnn("resnet_basic").train()  # measuring switches to eval mode; a failure must switch back
    plan = PruningPlan(channels=random_channel_plan(hfprune.channel_groups(model), seed=2))
    batches = [pixel_batch(seed=s) for s in range(2)]
    before = fingerprint(model)

    def measure(m):
        return hfprune.channel_compensation(m, plan, batches, sequential=sequential)

    n = count_steps(model, measure, _patch_hooks)
    assert n > 1
    faults = [lambda mp, k=k: _patch_hooks(mp, Counter(k, exc), model) for k in range(1, n + 1)]
    if sequential:  # a failure in the middle of the sequential folds, after one changed tensors in place
        faults.append(lambda mp: mp.setattr(hfprune.Compensation, "fold", _fold_then(exc)))
    for fault in faults:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(exc, match="injected"):
            fault(mp)
            measure(model)
        assert_unchanged(model, before)


# ----- prune_to_budget's final surgery ------------------------------------------------------------------------------
def test_budget_surgery_is_all_or_nothing():
    from hfprune.budget import api as budget

    model = make_model("bert")
    inputs = make_inputs(model)
    batches = [{**make_inputs(model, batch=4, seed=s), "labels": torch.arange(4) % 3} for s in range(2)]
    masks = budget.find_budget_masks(model, batches, flops=0.6, num_samples=None, show_progress=False)
    assert masks.head_scales or masks.neuron_scales  # the fold changes weights in place before the surgery
    before, logits = fingerprint(model), logits_of(model, inputs)
    n = count_steps(make_model("bert"), lambda m: budget.apply_budget_masks(m, copy.deepcopy(masks)), _patch_setattr)
    assert n > 10
    faults = [(EXCEPTIONS[k % 2], lambda mp, k=k: _patch_setattr(mp, Counter(k, EXCEPTIONS[k % 2]), model))
              for k in range(1, n + 1, max(1, n // 12))]
    faults += [(exc, lambda mp, e=exc: _patch_entry(mp, "heads.remove", e)) for exc in EXCEPTIONS]
    for exc, fault in faults:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(exc, match="injected"):
            fault(mp)
            budget.apply_budget_masks(model, copy.deepcopy(masks))
        assert_unchanged(model, before, inputs, logits)

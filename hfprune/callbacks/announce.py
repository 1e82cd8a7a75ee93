"""What `PruningCallback` tells the user: the mask / prune lines, and how a folder saved after pruning loads.

The lines are logged at WARNING on the "hfprune" logger, so they show with Python's default logging (stderr) and in
notebooks; hfprune attaches no handler of its own. After the model is pruned, `model.save_pretrained` (what
`trainer.save_model()`, checkpoints and `push_to_hub()` call) also writes hfprune's remote-code export
(`hfprune.remote.add_remote_code`), so the folder loads with plain `from_pretrained(..., trust_remote_code=True)`
without hfprune; the first such save logs how to load it.
"""

from __future__ import annotations

import json
import logging
import weakref
from pathlib import Path

logger = logging.getLogger("hfprune")

_HINTED: weakref.WeakSet = weakref.WeakSet()  # models whose first save already logged the loading hint


# ----- the mask / prune lines -----------------------------------------------------------------------------------------
def totals(structure: dict) -> dict[str, int]:
    """Unit totals of a `model_structure` dict: layers, heads, FFN neurons (CNNs: channels)."""
    if "channels" in structure:
        return {"channels": sum(structure["channels"].values())}
    return {"layers": structure["num_layers"], "heads": sum(structure["heads"]), "FFN": sum(structure["ffn"])}


def planned_totals(structure: dict, plan) -> dict[str, int]:
    """The totals `structure` will have once `plan` is applied (what a mask removes from the computation)."""
    if "channels" in structure:
        return {"channels": sum(structure["channels"].values()) - plan.num_channels()}
    kept = [i for i in range(structure["num_layers"]) if i not in set(plan.layers)]
    return {"layers": len(kept),
            "heads": sum(structure["heads"][i] - len(plan.heads.get(i, ())) for i in kept),
            "FFN": sum(structure["ffn"][i] - len(plan.neurons.get(i, ())) for i in kept)}


def change_text(before: dict[str, int], after: dict[str, int]) -> str:
    """'heads 72 -> 36, FFN 18432 -> 9216' (only what changes), or 'nothing removed'."""
    parts = [f"{name} {before[name]} -> {after[name]}" for name in ("layers", "heads", "FFN", "channels")
             if name in before and before[name] != after[name]]
    return ", ".join(parts) or "nothing removed"


def announce(what: str, before: dict[str, int], after: dict[str, int]) -> None:
    """One WARNING line: `hfprune: <what>: heads 72 -> 36, FFN 18432 -> 9216`."""
    logger.warning("hfprune: %s: %s", what, change_text(before, after))


# ----- saving after pruning -------------------------------------------------------------------------------------------
def export_on_save(model) -> None:
    """From now on `model.save_pretrained(folder)` also writes the remote-code export into `folder`.

    Only this instance's `save_pretrained` is replaced (the class and every other model are left alone); copies
    (`copy.deepcopy`) and pickles keep the behaviour. Calling it again does nothing.
    """
    if not isinstance(vars(model).get("save_pretrained"), SaveWithRemoteCode):
        model.save_pretrained = SaveWithRemoteCode(model)


class SaveWithRemoteCode:
    """A pruned model's `save_pretrained`: its class's `save_pretrained`, then `write_remote_code` (main process)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, save_directory, *args, **kwargs):
        result = type(self.model).save_pretrained(self.model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(self.model, Path(save_directory))
        return result


def write_remote_code(model, folder: Path) -> None:
    """`add_remote_code(folder)`, then one line on how the folder loads (WARNING the first time for this model).

    A folder the export refuses still has its weights and config (the save itself succeeded): the line then says
    whether plain `from_pretrained` loads it, or that `hfprune.load_pruned` is needed.
    """
    from ..remote import add_remote_code

    try:
        add_remote_code(folder)
    except Exception as err:  # noqa: BLE001  (the save succeeded; the export is an extra that must not undo it)
        _hint_without_remote_code(model, folder, err)
        return
    from ..serving.plain import plain_config

    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
    auto = next((key for key in sorted(auto_map) if key != "AutoModel"), "AutoModel")
    loads = plain_config(model)[1]
    plain = ("without trust_remote_code it loads as well" if loads.plain and not loads.stand_in else
             f"without trust_remote_code, from_pretrained fails on a size mismatch ({loads.reason})")
    level = logging.INFO if model in _HINTED else logging.WARNING
    _HINTED.add(model)
    logger.log(level, "hfprune: saved the pruned model to %s with its remote code: transformers.%s.from_pretrained("
               "%r, trust_remote_code=True) loads it without hfprune, hfprune.load_pruned(%r) with it; %s", folder,
               auto, str(folder), str(folder), plain)


def _hint_without_remote_code(model, folder: Path, err: Exception) -> None:
    from ..serving.plain import plain_config

    loads = plain_config(model)[1]
    if loads.plain and not loads.stand_in:
        logger.warning("hfprune: saved the pruned model to %s without remote code (%s); it loads with plain "
                       "from_pretrained as %s, and with hfprune.load_pruned", folder, err, loads.class_name)
    else:
        logger.warning("hfprune: saved the pruned model to %s without remote code (%s); plain from_pretrained "
                       "cannot build its shapes (%s): load it with hfprune.load_pruned(%r)", folder, err,
                       loads.reason, str(folder))

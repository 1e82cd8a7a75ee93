"""The transformers internals hfprune relies on where no public API exists: these tests fail, loudly and by name,
when an upgrade moves them, instead of hfprune silently misloading.

* checkpoint -> model key renaming (`transformers.conversion_mapping.get_model_conversion_mapping`,
  `transformers.core_model_loading.rename_source_key`), used by `load_pruned`;
* the link between Auto classes and the public `*_MAPPING_NAMES` dicts, used by `add_remote_code`.
"""

from __future__ import annotations

import pytest
import transformers
from transformers.models.auto import modeling_auto

import hfprune
from hfprune.io import read_safetensors, to_model_keys
from hfprune.io.rebuild import conversion_internals
from hfprune.remote.generate import AUTO_CLASS_MAPPINGS, auto_classes_for
from tests.conftest import FAMILIES, make_inputs, make_model


def test_conversion_internals_exist_with_the_parameters_hfprune_passes():
    found = conversion_internals()
    assert {"get_model_conversion_mapping", "rename_source_key", "WeightRenaming", "WeightConverter"} <= set(found)


def test_vit_legacy_checkpoint_names_are_renamed_to_the_model_names(tmp_path):
    """transformers v5 saves ViT under its legacy names (`encoder.layer.N.attention.attention.query`) and renames
    them on load; `to_model_keys` must give exactly the model's own names."""
    model = make_model("vit")
    model.save_pretrained(tmp_path)
    saved = read_safetensors(tmp_path)
    renamed = to_model_keys(model, saved)
    assert set(renamed) == set(model.state_dict())
    assert any(".attention.attention." in k for k in saved)  # the legacy names are really what is on disk
    assert sum(a != b for a, b in zip(saved, renamed)) >= 4 * model.config.num_hidden_layers


def test_a_moved_internal_is_a_clear_error_naming_it(tmp_path, monkeypatch):
    """Before: an ImportError fallback took names as they are, and a ViT load then failed with a misleading
    'tensor ... does not exist'. Now the error names the internal and the installed transformers version."""
    import transformers.core_model_loading as core

    model = hfprune.prune(make_model("vit"), hfprune.PruningPlan(heads={0: [1]}))
    hfprune.save_pruned(model, tmp_path / "vit")
    monkeypatch.delattr(core, "rename_source_key")
    with pytest.raises(RuntimeError, match="rename_source_key") as err:
        hfprune.load_pruned(tmp_path / "vit")
    assert transformers.__version__ in str(err.value)
    monkeypatch.undo()
    reloaded = hfprune.load_pruned(tmp_path / "vit")
    inputs = make_inputs(model)
    assert (reloaded(**inputs).logits - model(**inputs).logits).abs().max() < 1e-5


def test_a_renamed_parameter_is_a_clear_error(monkeypatch):
    import transformers.core_model_loading as core

    def rename_source_key(key, renamings, converters, prefix=None, meta=None):  # positional names changed
        return key, None

    monkeypatch.setattr(core, "rename_source_key", rename_source_key)
    with pytest.raises(RuntimeError, match=r"rename_source_key.*no longer takes \['source_key'"):
        conversion_internals()


@pytest.mark.parametrize("auto_class", sorted(AUTO_CLASS_MAPPINGS))
def test_auto_class_table_matches_transformers_wiring(auto_class):
    """Each entry pairs an Auto class with the public names dict transformers itself builds that class from (read
    here through the private attribute that links them, so that a rewiring fails this test, not a user)."""
    names = getattr(modeling_auto, AUTO_CLASS_MAPPINGS[auto_class], None)
    assert isinstance(names, dict), f"transformers no longer has modeling_auto.{AUTO_CLASS_MAPPINGS[auto_class]}"
    assert getattr(transformers, auto_class)._model_mapping._model_mapping is names


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_classes_of_every_supported_family_are_all_found(family):
    """Every Auto class of transformers that lists the family's classes is in the table (so auto_map is complete)."""
    model = make_model(family)
    model_type = model.config.model_type
    for cls_name in {type(model).__name__, modeling_auto.MODEL_MAPPING_NAMES[model_type]}:
        private = sorted(name for name in vars(modeling_auto) if name.startswith("AutoModel")
                         and cls_name in _listed(getattr(modeling_auto, name), model_type))
        assert private, cls_name
        assert auto_classes_for(model_type, cls_name) == private, cls_name


def _listed(auto_cls, model_type) -> tuple:
    entry = getattr(getattr(auto_cls, "_model_mapping", None), "_model_mapping", {}).get(model_type)
    return tuple(entry) if isinstance(entry, (list, tuple)) else (entry,)

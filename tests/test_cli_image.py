"""`hfprune prune --task image-classification`: a tiny ResNet on scikit-learn digits, from .npz arrays and from an
imagefolder, with the GLUE path's outputs (model, results.json, report, plot, model card)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification

import hfprune
from hfprune.app.cli.main import main


@pytest.fixture
def resnet_dir(tmp_path):
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[16, 32],
                                                      depths=[1, 1], layer_type="basic", num_labels=10))
    model.save_pretrained(tmp_path / "resnet")
    return tmp_path / "resnet"


@pytest.fixture
def digits_npz(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = (digits.images * 16).astype(np.uint8), digits.target  # 0..255 like image files
    np.savez(tmp_path / "train.npz", images=images[:200], labels=labels[:200])
    np.savez(tmp_path / "dev.npz", images=images[200:300], labels=labels[200:300])
    return tmp_path / "train.npz", tmp_path / "dev.npz"


def test_prune_image_classification_from_arrays(resnet_dir, digits_npz, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["prune", "--model", str(resnet_dir), "--task", "image-classification", "--train-file",
                 str(digits_npz[0]), "--validation-file", str(digits_npz[1]), "--image-size", "16",
                 "--channels", "0.5", "--channel-criterion", "bn_scale", "--finetune-steps", "4",
                 "--recover-steps", "2", "--batch-size", "32", "--learning-rate", "1e-3", "--output", str(out),
                 "--quiet"])
    assert code == 0
    assert {"model.safetensors", "config.json", "results.json", "report.md", "README.md", "channels.png",
            "modeling_hfprune.py"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "image-classification" and results["removed"]["channels"] > 0
    assert results["params_ratio"] < 1 and results["reload_max_abs_diff"] <= 1e-4
    assert results["pruned"]["metrics_before_recovery"]["validation"]["num_examples"] == 100
    model = hfprune.load_pruned(out)
    assert sum(model.config.hfprune["channels"].values()) < sum(model.config.hfprune["base"].values())
    assert "image-classification" in capsys.readouterr().out


def test_compensate_folds_removed_channels_into_the_saved_model(resnet_dir, digits_npz, tmp_path):
    from safetensors.torch import load_file

    def run(out, *extra):
        code = main(["prune", "--model", str(resnet_dir), "--task", "image-classification", "--train-file",
                     str(digits_npz[0]), "--validation-file", str(digits_npz[1]), "--image-size", "16",
                     "--channels", "0.5", "--channel-criterion", "l1", "--scope", "layer", "--finetune-steps", "4",
                     "--batch-size", "32", "--output", str(out), "--quiet", *extra])
        assert code == 0
        return json.loads((out / "results.json").read_text()), load_file(out / "model.safetensors")

    plain, plain_weights = run(tmp_path / "plain")
    comp, comp_weights = run(tmp_path / "comp", "--compensate")
    assert comp["removed"] == plain["removed"] and comp["reload_max_abs_diff"] <= 1e-4
    assert comp["plan"]["meta"]["compensated"] is True and plain["plan"]["meta"]["compensated"] is False
    # Same channels removed, same kept weights; only the consumers' BatchNorm means / biases absorbed the fold.
    changed = {k for k in plain_weights if not torch.equal(plain_weights[k], comp_weights[k])}
    assert changed and all(k.endswith(("running_mean", "bias")) for k in changed), changed


def test_compensate_is_for_image_classification_only(tmp_path, capsys):
    assert main(["prune", "--model", str(tmp_path / "m"), "--task", "sst2", "--data-dir", str(tmp_path),
                 "--compensate", "--heads", "0.5", "--output", str(tmp_path / "o"), "--quiet"]) == 2
    assert ("--compensate applies to --task image-classification only, not to --task sst2 "
            "(key prune.channel_compensate)") in capsys.readouterr().err


def test_prune_image_classification_from_an_imagefolder(resnet_dir, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, rows in (("train", range(0, 60)), ("validation", range(60, 90))):
        for i in rows:
            folder = tmp_path / "images" / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[i] * 16).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    code = main(["prune", "--model", str(resnet_dir), "--task", "image-classification", "--data-dir",
                 str(tmp_path / "images"), "--channels", "0.3", "--channel-criterion", "l1", "--scope", "layer",
                 "--finetune-steps", "2", "--batch-size", "16", "--output", str(out), "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dense"]["metrics"]["validation"]["num_examples"] == 30 and results["removed"]["channels"] > 0


def test_image_recipe_bad_input(resnet_dir, digits_npz, tmp_path, capsys):
    base = ["prune", "--model", str(resnet_dir), "--task", "image-classification", "--output", str(tmp_path / "o"),
            "--quiet"]
    assert main([*base, "--channels", "0.5"]) == 2
    assert "needs exactly one of data_dir" in capsys.readouterr().err
    assert main([*base, "--train-file", str(digits_npz[0]), "--validation-file", str(digits_npz[1]),
                 "--heads", "0.5"]) == 2
    assert ("--heads applies to --task <GLUE task> or causal-lm only, not to --task image-classification "
            "(key prune.heads)") in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_prune_image_classification_from_a_saved_datasets_dataset(resnet_dir, tmp_path):
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()

    def split(rows):
        return datasets.Dataset.from_dict({
            "img": [Image.fromarray((digits.images[i] * 16).astype(np.uint8)) for i in rows],
            "label": [int(digits.target[i]) for i in rows]}, features=datasets.Features(
                {"img": datasets.Image(), "label": datasets.Value("int64")}))

    datasets.DatasetDict({"train": split(range(48)), "test": split(range(48, 64))}).save_to_disk(tmp_path / "ds")
    out = tmp_path / "out"
    assert main(["prune", "--model", str(resnet_dir), "--task", "image-classification", "--dataset",
                 str(tmp_path / "ds"), "--channels", "0.25", "--channel-criterion", "random", "--batch-size", "16",
                 "--output", str(out), "--quiet"]) == 0
    assert json.loads((out / "results.json").read_text())["pruned"]["metrics"]["validation"]["num_examples"] == 16


def test_info_on_a_pruned_cnn(tmp_path, capsys):
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1],
                                                      layer_type="bottleneck", num_labels=3))
    name = "resnet.encoder.stages.1.layers.0.layer.0.convolution"
    before = sum(p.numel() for p in model.parameters())
    hfprune.prune(model, hfprune.PruningPlan(channels={name: [0, 1, 2]}))
    hfprune.save_pruned(model, tmp_path / "cnn")
    assert main(["info", str(tmp_path / "cnn"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params_before"] == before and info["params_after"] == sum(p.numel() for p in model.parameters())
    assert {"group": name, "before": 8, "after": 5} in info["channels"]
    assert main(["info", str(tmp_path / "cnn")]) == 0
    assert "removed (step 1): 3 channels in 1 groups" in capsys.readouterr().out


def test_eval_a_pruned_cnn(resnet_dir, digits_npz, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", "--model", str(resnet_dir), "--task", "image-classification", "--train-file",
                 str(digits_npz[0]), "--validation-file", str(digits_npz[1]), "--channels", "0.5",
                 "--output", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--task", "image-classification", "--validation-file",
                 str(digits_npz[1]), "--json", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]["validation"]
    assert metrics["num_examples"] == 100
    saved = json.loads((out / "results.json").read_text())["pruned"]["metric"]
    assert metrics["accuracy"] == pytest.approx(saved)  # same images, same model: the same accuracy
    assert main(["eval", "--model", str(out), "--task", "image-classification"]) == 2
    assert "needs exactly one of --data-dir" in capsys.readouterr().err


def test_an_image_yaml_recipe_runs_with_hfprune_run(resnet_dir, digits_npz, tmp_path, capsys):
    import yaml

    recipe = tmp_path / "cnn.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(resnet_dir)},
        "data": {"task": "image-classification", "train_file": str(digits_npz[0]),
                 "validation_file": str(digits_npz[1]), "image_size": 16},
        "prune": {"channels": 0.5, "channel_criterion": "l1"},
        "eval": {"latency_repeats": 1},
        "output": {"dir": str(tmp_path / "out"), "plots": False}}))
    assert main(["run", str(recipe), "--quiet"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["removed"]["channels"] > 0 and results["recipe"]["prune"]["channels"] == 0.5
    assert "image-classification validation accuracy" in capsys.readouterr().out
    assert main(["run", str(recipe), "--set", "prune.heads=0.5"]) == 2
    assert "prune.heads does not apply to task image-classification" in capsys.readouterr().err

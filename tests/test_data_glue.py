"""GLUE loading: every task's original TSV layout (small files written here), the shared SST-2/MRPC copies,
CSV/JSON files, and the errors a user meets (unknown task, missing split, missing column)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hfprune.app.glue.data import load_task_data
from hfprune.app.glue.files import read_glue_tsv
from hfprune.app.glue.metrics import glue_metrics
from hfprune.app.glue.tasks import GLUE_TASKS, get_task

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
QUOTED = 'he said " it \'s fine " and left'  # bare quotes: only csv.QUOTE_NONE keeps this intact

MNLI_TRAIN = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV = MNLI_TRAIN[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]


def _pair_rows(labels):
    return [(f"first {i} {QUOTED}", f"second {i}", lab) for i, lab in enumerate(labels)]


# task -> (folder, {file: text}), each file in the task's exact original layout, and the label ids expected.
def _layouts():
    t = "\t"
    out = {}
    cola = "".join(f"gj04{t}{lab}{t}{'' if lab else '*'}{t}sentence {i} {QUOTED}\n" for i, lab in enumerate([1, 0, 1]))
    out["cola"] = ("CoLA", {"train.tsv": cola, "dev.tsv": cola}, [1, 0, 1])
    sst = "sentence\tlabel\n" + "".join(f"phrase {i} {QUOTED} \t{lab}\n" for i, lab in enumerate([0, 1, 1]))
    out["sst2"] = ("SST-2", {"train.tsv": sst, "dev.tsv": sst}, [0, 1, 1])
    mrpc = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "".join(
        f"{lab}\t{100 + i}\t{200 + i}\t{a}\t{b}\n" for i, (a, b, lab) in enumerate(_pair_rows([1, 0, 1])))
    out["mrpc"] = ("MRPC", {"train.tsv": mrpc, "dev.tsv": mrpc}, [1, 0, 1])
    sts = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n" + "".join(
        f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}\t{lab}\n"
        for i, (a, b, lab) in enumerate(_pair_rows(["5.000", "0.500", "3.800"])))
    out["stsb"] = ("STS-B", {"train.tsv": sts, "dev.tsv": sts}, [5.0, 0.5, 3.8])
    qqp = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n" + "".join(
        f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{lab}\n" for i, (a, b, lab) in enumerate(_pair_rows([0, 1, 0])))
    out["qqp"] = ("QQP", {"train.tsv": qqp, "dev.tsv": qqp}, [0, 1, 0])

    def mnli(header, labels):
        extra = len(header) - 11  # label1 .. label5 columns between sentence2 and gold_label
        rows = "".join(f"{i}\t{31193 + i}\t{i}n\tgovernment\t( ( a ) )\t( b )\t(ROOT a)\t(ROOT b)\t{a}\t{b}\t"
                       + "\t".join([lab] * extra) + f"\t{lab}\n" for i, (a, b, lab) in enumerate(_pair_rows(labels)))
        return "\t".join(header) + "\n" + rows

    names = ["neutral", "contradiction", "entailment"]
    out["mnli"] = ("MNLI", {"train.tsv": mnli(MNLI_TRAIN, names), "dev_matched.tsv": mnli(MNLI_DEV, names),
                            "dev_mismatched.tsv": mnli(MNLI_DEV, names)}, [1, 2, 0])
    qnli = "index\tquestion\tsentence\tlabel\n" + "".join(
        f"{i}\t{a}?\t{b}\t{lab}\n" for i, (a, b, lab) in enumerate(_pair_rows(["entailment", "not_entailment"])))
    out["qnli"] = ("QNLI", {"train.tsv": qnli, "dev.tsv": qnli}, [0, 1])
    rte = "index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\t{a}\t{b}\t{lab}\n" for i, (a, b, lab) in enumerate(_pair_rows(["not_entailment", "entailment"])))
    out["rte"] = ("RTE", {"train.tsv": rte, "dev.tsv": rte}, [1, 0])
    wnli = "index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\t{a}\t{b}\t{lab}\n" for i, (a, b, lab) in enumerate(_pair_rows([1, 0, 1])))
    out["wnli"] = ("WNLI", {"train.tsv": wnli, "dev.tsv": wnli}, [1, 0, 1])
    return out


LAYOUTS = _layouts()

# task -> (predictions against the layout's labels above, the GLUE metrics of those predictions worked out by hand)
METRICS_BY_HAND = {
    # labels [1, 0, 1]: tp=1, tn=1, fp=0, fn=1 -> MCC = (1*1 - 0*1) / sqrt((1+0)(1+1)(1+0)(1+1)) = 1/2
    "cola": ([1, 0, 0], {"matthews_correlation": 0.5}),
    "sst2": ([0, 1, 0], {"accuracy": 2 / 3}),  # labels [0, 1, 1]
    # labels [1, 0, 1]: tp=2, fp=1, fn=0 -> F1 = 2*2 / (2*2 + 1 + 0) = 4/5
    "mrpc": ([1, 1, 1], {"f1": 0.8, "accuracy": 2 / 3}),
    # labels [5.0, 0.5, 3.8] (mean 3.1; deviations 1.9, -2.6, 0.7); predictions [3, 1, 4] (mean 8/3; deviations
    # 1/3, -5/3, 4/3): Pearson = 5.9 / sqrt(10.86 * 42/9); ranks [3, 1, 2] vs [2, 1, 3]: Spearman = 1 - 6*2/(3*8)
    "stsb": ([3.0, 1.0, 4.0], {"pearson": 5.9 / math.sqrt(10.86 * 42 / 9), "spearmanr": 0.5}),
    # labels [0, 1, 0]: tp=1, fp=1, fn=0 -> F1 = 2/3
    "qqp": ([1, 1, 0], {"f1": 2 / 3, "accuracy": 2 / 3}),
    "mnli": ([1, 0, 0], {"accuracy": 2 / 3}),  # labels [1, 2, 0]
    "qnli": ([0, 0], {"accuracy": 0.5}),  # labels [0, 1]
    "rte": ([1, 1], {"accuracy": 0.5}),  # labels [1, 0]
    "wnli": ([0, 0, 1], {"accuracy": 2 / 3}),  # labels [1, 0, 1]
}


def _write(root: Path, task: str) -> Path:
    folder, files, _ = LAYOUTS[task]
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / folder / name).write_text(text, encoding="utf-8")
    return root


def test_every_glue_task_has_a_layout_here():
    assert set(LAYOUTS) == set(GLUE_TASKS) == set(METRICS_BY_HAND)


@pytest.mark.parametrize("task", sorted(LAYOUTS))
def test_original_layout_loads_with_hub_columns_and_label_ids(tmp_path, task):
    spec = get_task(task)
    data = load_task_data(task, data_dir=_write(tmp_path, task))
    assert set(data) == {"train", *spec.eval_splits}
    expected = LAYOUTS[task][2]
    for split in data:
        ds = data[split]
        assert ds.column_names == [*spec.text_columns, "label"]
        np.testing.assert_allclose(ds["label"], expected, rtol=1e-6)
        texts = ds[spec.text_columns[0]]
        assert all('" it \'s fine "' in t for t in texts), texts  # quotes kept verbatim
        if spec.is_pair:
            assert ds[spec.text_columns[1]][0].startswith("second 0")
    # The loader's labels feed the task's metric: fixed predictions against them give the values worked out by hand.
    preds, expected = METRICS_BY_HAND[task]
    scores = glue_metrics(spec, preds, data["train"]["label"])
    assert list(scores) == list(spec.metrics)
    assert scores == pytest.approx(expected), scores


def test_label_ids_follow_the_hub_order():
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("qnli").label_names[:2] == ("entailment", "not_entailment")
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("wnli").label_names == ("not_entailment", "entailment")
    assert get_task("stsb").num_labels == 1 and get_task("stsb").is_regression
    assert get_task("SST-2").name == "sst2" and get_task("sts-b").name == "stsb"


@pytest.mark.skipif(not (SHARED / "MRPC" / "dev.tsv").exists(), reason="shared GLUE copy not present")
def test_shared_sst2_and_mrpc_dev_files():
    sst = read_glue_tsv(get_task("sst2"), SHARED / "SST-2" / "dev.tsv")
    assert sst.num_rows == 872 and sst[0] == {"sentence": "it 's a charming and often affecting journey . ",
                                              "label": 1}
    mrpc = read_glue_tsv(get_task("mrpc"), SHARED / "MRPC" / "dev.tsv")  # file starts with a UTF-8 BOM
    assert mrpc.num_rows == 408
    assert mrpc[0]["label"] == 1 and mrpc[0]["sentence2"].startswith('" The foodservice pie business')
    assert sum(mrpc["label"]) == 279  # the dev set's known class balance: 279 paraphrases of 408


def test_task_folder_itself_is_accepted(tmp_path):
    root = _write(tmp_path, "rte")
    data = load_task_data("rte", data_dir=root / "RTE")
    assert data["validation"].num_rows == 2


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown task 'sst3'"):
        get_task("sst3")


def test_missing_split_names_the_file(tmp_path):
    root = _write(tmp_path, "sst2")
    (root / "SST-2" / "dev.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv not found: the validation split of task 'sst2'"):
        load_task_data("sst2", data_dir=root)
    with pytest.raises(FileNotFoundError, match="no MRPC/ folder"):
        load_task_data("mrpc", data_dir=root)


def test_wrong_layout_and_bad_label_are_named(tmp_path):
    root = _write(tmp_path, "rte")
    (root / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:2: label 'maybe'"):
        load_task_data("rte", data_dir=root)
    (root / "RTE" / "dev.tsv").write_text("sentence\tlabel\nx\t1\n")
    with pytest.raises(ValueError, match="no column 'sentence1'"):
        load_task_data("rte", data_dir=root)


def test_mnli_unlabelled_rows_are_skipped(tmp_path):
    root = _write(tmp_path, "mnli")
    path = root / "MNLI" / "dev_matched.tsv"
    path.write_text(path.read_text() + "\t".join(["9"] * 15 + ["-"]) + "\n")
    assert load_task_data("mnli", data_dir=root)["validation_matched"].num_rows == 3


def test_csv_and_json_files_with_label_names(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text('sentence1,sentence2,label\n"a, b",c,not_entailment\nd,e,entailment\n')
    dev = tmp_path / "dev.jsonl"
    dev.write_text("\n".join(json.dumps({"sentence1": s, "sentence2": "x", "label": lab, "extra": 1})
                             for s, lab in (("p", 0), ("q", 1))))
    data = load_task_data("rte", train_file=str(train), validation_file=str(dev))
    assert data["train"]["label"] == [1, 0] and data["train"]["sentence1"][0] == "a, b"
    assert data["validation"].column_names == ["sentence1", "sentence2", "label"]
    with pytest.raises(ValueError, match="no column 'sentence'"):
        load_task_data("sst2", train_file=str(train), validation_file=str(dev))
    with pytest.raises(ValueError, match="needs --validation-file"):
        load_task_data("rte", train_file=str(train))


def test_mnli_from_files_loads_the_matched_split(tmp_path):
    # --validation-file fills validation_matched; the mismatched dev set has no file flag and must not be demanded.
    path = tmp_path / "mnli.csv"
    path.write_text("premise,hypothesis,label\na,b,neutral\nc,d,contradiction\n")
    data = load_task_data("mnli", train_file=str(path), validation_file=str(path))
    assert set(data) == {"train", "validation_matched"}
    assert data["validation_matched"]["label"] == [1, 2]
    assert set(load_task_data("mnli", validation_file=str(path), splits=list(get_task("mnli").eval_splits))) == {
        "validation_matched"}
    with pytest.raises(ValueError, match="validation_mismatched split of task 'mnli' cannot come from"):
        load_task_data("mnli", validation_file=str(path), splits=["validation_mismatched"])
    with pytest.raises(ValueError, match="needs --validation-file"):
        load_task_data("mnli", train_file=str(path))


def test_subsets_are_seeded_and_sized(tmp_path):
    root = tmp_path
    (root / "SST-2").mkdir()
    rows = "".join(f"s{i}\t{i % 2}\n" for i in range(50))
    for name in ("train.tsv", "dev.tsv"):
        (root / "SST-2" / name).write_text("sentence\tlabel\n" + rows)
    a = load_task_data("sst2", data_dir=root, max_train_samples=10, max_eval_samples=5, seed=3)
    b = load_task_data("sst2", data_dir=root, max_train_samples=10, max_eval_samples=5, seed=3)
    assert a["train"]["sentence"] == b["train"]["sentence"] and a["train"].num_rows == 10
    assert a["validation"]["sentence"] == [f"s{i}" for i in range(5)]

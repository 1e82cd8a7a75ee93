"""Hub publishing and Hub-id loading fail with one clear line when the Hub cannot be used (no network needed)."""

from __future__ import annotations

import huggingface_hub
import pytest
from conftest import make_model
from huggingface_hub import constants

import hfprune
from hfprune import PruningPlan
from hfprune.remote import HubUnavailableError, push_folder_to_hub


@pytest.fixture
def folder(tmp_path):
    model = make_model("bert", 7)
    hfprune.prune(model, PruningPlan(heads={0: [1, 2]}, neurons={1: [0, 5]}))
    return hfprune.save_pruned(model, tmp_path / "pruned")


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def _online(monkeypatch):
    """Take offline mode off, so the code under test really tries the (unreachable or mocked) endpoint."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_offline_mode_gives_a_clear_error(folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError) as err:
        push_folder_to_hub(folder, "someone/pruned", token="hf_test")
    assert "offline" in _one_line(err) and "someone/pruned" in str(err.value)


def test_unreachable_endpoint_gives_a_clear_error(folder, monkeypatch):
    # Port 9 (discard) is closed here: the connection is refused at once, nothing leaves the machine.
    _online(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubUnavailableError) as err:
        push_folder_to_hub(folder, "someone/pruned", token="hf_test")
    assert "http://127.0.0.1:9" in _one_line(err) and "someone/pruned" in str(err.value)


def test_missing_token_gives_a_clear_error(folder, monkeypatch):
    _online(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PermissionError) as err:
        push_folder_to_hub(folder, "someone/pruned")
    assert "HF_TOKEN" in _one_line(err)


def test_upload_calls(folder, monkeypatch):
    _online(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_saved_login")
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", self.token, repo_id, kw))

    def upload_folder(self, **kw):
        calls.append(("upload_folder", self.token, kw.pop("repo_id"), kw))
        return type("Info", (), {"commit_url": "https://hub.example/commit/1"})()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = push_folder_to_hub(folder, "someone/pruned", private=True, commit_message="v1")
    assert url == "https://hub.example/commit/1"
    (_, token, repo, kw), (_, token2, repo2, kw2) = calls
    assert (token, repo, kw["private"], kw["exist_ok"]) == ("hf_saved_login", "someone/pruned", True, True)
    assert (token2, repo2, kw2["folder_path"], kw2["commit_message"]) == ("hf_saved_login", "someone/pruned",
                                                                         str(folder), "v1")


def test_folders_that_must_not_be_published(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        push_folder_to_hub(tmp_path, "someone/pruned", token="hf_test")
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        push_folder_to_hub(folder, "someone/pruned", token="hf_test")
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(ValueError, match="repo_id"):
        push_folder_to_hub(folder, "a/b/c", token="hf_test")


def test_load_pruned_of_an_uncached_hub_id_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as err:
        hfprune.load_pruned("someone/not-cached", cache_dir=tmp_path)
    text = _one_line(err)
    assert "'someone/not-cached'" in text and "offline" in text and "local folder" in text
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        hfprune.load_pruned(tmp_path / "no" / "such" / "folder")

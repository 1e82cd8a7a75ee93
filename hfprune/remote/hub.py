"""`push_folder_to_hub`: upload a saved pruned folder to the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

# Weights travel only as safetensors; a folder holding one of these is refused rather than silently published.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_TRUE = {"1", "on", "yes", "true"}


class HubUnavailableError(ConnectionError):
    """The Hub cannot be reached (offline mode, no network, wrong `HF_ENDPOINT`)."""


def _endpoint() -> str:
    from huggingface_hub import constants

    # Read at call time: huggingface_hub reads HF_ENDPOINT once, at import.
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower()
    return env in _TRUE or constants.is_offline_mode()


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be reached now ("offline mode is on (HF_HUB_OFFLINE)", "cannot reach URL"), or None.

    One connection attempt of at most `timeout` seconds, so a caller can fail at once instead of letting a download
    retry for half a minute.
    """
    import socket
    from urllib.parse import urlparse

    if _offline():
        return "offline mode is on (HF_HUB_OFFLINE)"
    url = urlparse(_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return f"cannot reach {_endpoint()}"
    return None


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx", "httpx2", "requests"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in ("TransportError", "TimeoutException", "ConnectionError", "Timeout"):
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                errors.append(cls)
    return tuple(errors)


def check_folder(folder: Path) -> None:
    """Refuse a folder that is not a saved model or that holds pickle weights (named)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"push_folder_to_hub: {folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"push_folder_to_hub: {folder} has no config.json; save the model there first")
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"push_folder_to_hub: {folder} holds no .safetensors weights")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"push_folder_to_hub: {folder} holds pickle files {pickles}; hfprune publishes weights only "
                         "as safetensors, remove them first")


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
                       commit_message: str = "Upload model pruned with hfprune") -> str:
    """Create (if needed) the Hub model repo `repo_id` and upload `folder` to it in one commit.

    Run `hfprune.add_remote_code(folder)` first if users without hfprune should load it with
    `trust_remote_code=True`; `hfprune.load_pruned(repo_id)` works either way.

    Args:
        folder (`str` or `os.PathLike`): a folder written by `save_pretrained` / `hfprune.save_pruned`.
        repo_id (`str`): `"user/name"` or `"org/name"`.
        token (`str`, *optional*): a write token; defaults to `HF_TOKEN` or the token saved by `hf auth login`.
        private (`bool`, *optional*, defaults to `False`): create the repo as private (an existing repo keeps its
            visibility).
        commit_message (`str`, *optional*): the message of the upload commit.

    Returns:
        `str`: the URL of the commit.

    Raises:
        FileNotFoundError / ValueError: the folder is not a saved model, or holds pickle weights.
        HubUnavailableError: offline mode is on or the Hub cannot be reached (one line, naming the endpoint).
        PermissionError: no token was found, or the Hub refused it.

    Example:
        ```python
        >>> from hfprune.remote import add_remote_code, push_folder_to_hub
        >>> add_remote_code("out/pruned")
        >>> push_folder_to_hub("out/pruned", "me/minilm-sst2-pruned")
        ```
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    check_folder(folder)
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"push_folder_to_hub: repo_id must look like 'user/name', got {repo_id!r}")
    endpoint = _endpoint()
    if _offline():
        raise HubUnavailableError(f"push_folder_to_hub: cannot push {folder} to {repo_id!r}: Hugging Face offline "
                                  "mode is on (HF_HUB_OFFLINE); unset it to upload")
    token = token or get_token()
    if not token:
        raise PermissionError(f"push_folder_to_hub: no Hugging Face token to push {repo_id!r}; pass token=..., set "
                              "HF_TOKEN, or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message, ignore_patterns=[".*", "**/.*"])
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if status in (401, 403):
            raise PermissionError(f"push_folder_to_hub: the Hub at {endpoint} refused the token for {repo_id!r} "
                                  f"(HTTP {status}); use a token with write access") from err
        raise RuntimeError(f"push_folder_to_hub: the Hub at {endpoint} refused the upload to {repo_id!r}: "
                           f"{first}") from err
    except _network_errors() as err:
        raise HubUnavailableError(f"push_folder_to_hub: cannot reach the Hugging Face Hub at {endpoint} to push "
                                  f"{repo_id!r} ({type(err).__name__}); check the network or HF_ENDPOINT") from err
    return str(getattr(info, "commit_url", info))

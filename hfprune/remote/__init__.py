"""Sharing pruned models: a remote-code modeling file for plain transformers, and the Hub upload."""

from .hub import HubUnavailableError, push_folder_to_hub
from .remote_code import add_remote_code

__all__ = ["HubUnavailableError", "add_remote_code", "push_folder_to_hub"]

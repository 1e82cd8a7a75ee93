"""Compatibility module: the older import path of `hfprune.remote` (`add_remote_code`, `push_folder_to_hub`).

New code imports them from `hfprune` or `hfprune.remote`; this module only re-exports.
"""

from .remote import HubUnavailableError, add_remote_code, push_folder_to_hub

__all__ = ["HubUnavailableError", "add_remote_code", "push_folder_to_hub"]

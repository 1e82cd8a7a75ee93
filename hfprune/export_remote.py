"""Publishing a pruned model: `add_remote_code` (loads without hfprune) and `push_folder_to_hub`.

The implementation lives in `hfprune.remote`; this module is the stable import path used by the CLI and the docs.
"""

from .remote import HubUnavailableError, add_remote_code, push_folder_to_hub

__all__ = ["HubUnavailableError", "add_remote_code", "push_folder_to_hub"]

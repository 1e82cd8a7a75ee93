"""GLUE data: task specifications and loading through `datasets` (Hub, original TSV folder, or CSV/JSON files)."""

from .glue_files import features_for, load_glue_dir, read_glue_tsv
from .loading import GLUE_HUB_ID, load_task_data, tokenize
from .tasks import GLUE_TASKS, TaskSpec, TsvLayout, get_task

__all__ = ["GLUE_HUB_ID", "GLUE_TASKS", "TaskSpec", "TsvLayout", "features_for", "get_task", "load_glue_dir",
           "load_task_data", "read_glue_tsv", "tokenize"]

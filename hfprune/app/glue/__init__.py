"""GLUE sequence classification: `options.py` (the recipe's dataclasses), `run.py` (`run_glue`), `report.py`
(report.md, model card, summary lines), `writer.py` (the output folder), with the task specifications (`tasks.py`),
data loading (`data.py`, `files.py`), metrics, model loading and plots."""

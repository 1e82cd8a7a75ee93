"""The hfprune application: tasks, data files, metrics, recipes, reports, the `hfprune` command and its demo.

A thin shell over the library (`hfprune.*` outside this package), which never imports from here. Today it serves
GLUE sequence classification; its layout: `cli/` (one module per command, `cli/demo.py` included), `data/` (task
specifications and loading), `metrics.py`, `recipes/` (a run declared as dataclasses, spelled as YAML or flags, and
its runner), `report/` (results.json, report.md, plots, model card, console summary).
"""

"""The hfprune application: the `hfprune` command, its recipes and reports, over the library (`hfprune.*` outside
this package, which never imports from here).

Three applications of one shape, each a folder with an options dataclass (`options.py`: help text, flags and
validation; a YAML recipe and the `hfprune prune` flags spell the same object), a run function (`run.py`), a report
(`report.py`) and a writer (`writer.py`): `glue/` (GLUE sequence classification), `image/` (CNN channel pruning),
`causal_lm/` (decoder LLMs). `apps.py` lists them; `common/` holds what they share; `cli/` is the command line.
"""

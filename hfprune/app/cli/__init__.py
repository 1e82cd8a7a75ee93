"""The `hfprune` command line (entry point `hfprune.app.cli.main:main`; also `python -m hfprune`): one module per
command (`run`, `prune`, `eval`, `info`, `demo`), and `flags.py`, which reads `hfprune prune`'s flags from the
applications' options."""

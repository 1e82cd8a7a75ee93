"""Decoder LLMs (calibration text, perplexity): `options.py` (the recipe's dataclasses), `run.py`
(`run_causal_lm`), `report.py` (results.json, report.md, plots, summary lines), `writer.py` (the output folder),
`data.py` (model loading, text windows)."""

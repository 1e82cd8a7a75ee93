"""Image classification (CNN channel pruning): `options.py` (the recipe's dataclasses), `run.py` (`run_image`),
`report.py` (results.json, report.md, model card, plot), `writer.py` (the output folder), `data.py` (imagefolder,
`datasets` or .npz images)."""

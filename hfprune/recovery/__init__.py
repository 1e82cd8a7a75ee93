"""Recovering a pruned model: `distill` (`DistillationTrainer`, a `transformers.Trainer` subclass) and `kd` (its loss
terms and settings, without `Trainer`). Nothing is imported here, so `hfprune.recovery.kd` stays light; the package
root loads `hfprune.DistillationTrainer` on first use.
"""

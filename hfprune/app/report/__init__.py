"""Outputs of a run: results.json, report.md, PNG plots and the model card, written atomically."""

from .markdown import metrics_table, render_model_card, render_report
from .outputs import check_output_dir, push_outputs, write_outputs
from .plots import head_importance_heatmap, structure_bars, sweep_plot, write_plots
from .progress import StageLog, quiet_libraries
from .results import build_results, per_layer_rows

__all__ = ["StageLog", "build_results", "check_output_dir", "head_importance_heatmap", "metrics_table",
           "per_layer_rows", "push_outputs", "quiet_libraries", "render_model_card", "render_report",
           "structure_bars", "sweep_plot", "write_outputs", "write_plots"]

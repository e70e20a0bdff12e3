"""Evaluation: pure functions from texts, judge probabilities and lengths to metrics,
plus files (AlpacaEval outputs, CSV/Markdown/HTML reports, plots, metric logs).

Metrics follow the RSPO paper's reporting (method.md §5): win rate against a baseline,
AlpacaEval-2-style length-controlled win rate, response length and Self-BLEU diversity.
Plotting imports matplotlib and ``embedding_diversity`` imports transformers only when
called, so importing this package stays light.
"""

from rspo.evaluation.alpaca import read_alpaca_outputs, write_alpaca_outputs, write_annotations
from rspo.evaluation.diversity import (
    bleu_against_others,
    distinct_n,
    embedding_diversity,
    mean_over_groups,
    self_bleu,
)
from rspo.evaluation.kl import KLEstimate, sequence_kl
from rspo.evaluation.length_control import LCResult, fit_length_glm, lc_win_rate
from rspo.evaluation.lengths import LengthStats, length_stats
from rspo.evaluation.plots import plot_frontier, plot_length_vs_winrate, plot_metrics_per_iteration
from rspo.evaluation.report import markdown_table, write_csv, write_html_report
from rspo.evaluation.summary import evaluate_responses
from rspo.evaluation.tensorboard import MetricsLogger
from rspo.evaluation.winrate import WinRate, as_preferences, win_rate

__all__ = [
    "KLEstimate",
    "LCResult",
    "LengthStats",
    "MetricsLogger",
    "WinRate",
    "as_preferences",
    "bleu_against_others",
    "distinct_n",
    "embedding_diversity",
    "evaluate_responses",
    "fit_length_glm",
    "lc_win_rate",
    "length_stats",
    "markdown_table",
    "mean_over_groups",
    "plot_frontier",
    "plot_length_vs_winrate",
    "plot_metrics_per_iteration",
    "read_alpaca_outputs",
    "self_bleu",
    "sequence_kl",
    "win_rate",
    "write_alpaca_outputs",
    "write_annotations",
    "write_csv",
    "write_html_report",
]

"""Analysis stages by name (figures and tables drawn from finished runs).

An analysis is `fn(params, metrics_root: Path, out_dir: Path) -> None`; it writes under
`metrics/analysis/<name>/`. `params['analyses']` lists which ones the pipeline runs.
ANALYSES is the one table of them, resolved lazily: checking a name imports nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtml.registry import Registry

AnalysisFn = Callable[[dict, Path, Path], None]

ANALYSES = Registry("analysis", {
    "attention-trend": "mtml.analysis.task_attention:attention_trend",
    "attention-correlation": "mtml.analysis.task_attention:attention_correlation",
    "ta-curves": "mtml.analysis.task_attention:ta_curves",
    "paper-table": "mtml.analysis.task_attention:paper_table_analysis",
    "transference": "mtml.analysis.transference:transference",
    "multimodal-table": "mtml.analysis.multimodal:multimodal_table",
    "multitask-table": "mtml.analysis.multitask:multitask_table",
    "optimal-attention": "mtml.analysis.multitask:optimal_attention",
    "attention-weights": "mtml.analysis.multitask:attention_weights",
    "multitask-speed": "mtml.analysis.multitask:multitask_speed",
})


def register_analysis(name: str) -> Callable[[AnalysisFn], AnalysisFn]:
    """Mark an analysis; it must be listed under `name` in ANALYSES (the one table)."""
    def wrap(fn: AnalysisFn) -> AnalysisFn:
        where = f"{fn.__module__}:{fn.__qualname__}"
        if ANALYSES.table.get(name) != where:
            raise RuntimeError(f"analysis {name!r} ({where}) is not listed so in mtml.analysis.registry.ANALYSES")
        return fn

    return wrap

"""Analysis stages by name (figures and tables drawn from a study's finished runs).

An analysis is `fn(study, layout, out_dir: Path) -> None`; the analyse stage gives it a
temporary folder that becomes `metrics/<study>/analysis/<name>/`. `analyses:` in params lists
which ones a study runs. ANALYSES is the one table of them (name -> "module:function"),
resolved lazily, so checking a params file imports no analysis.
"""

from __future__ import annotations

from collections.abc import Callable

from mtml.errors import UserError
from mtml.registry import Registry

ANALYSES = Registry("analysis", {
    "attention-trend": "mtml.analysis.task_attention:attention_trend",
    "attention-correlation": "mtml.analysis.task_attention:attention_correlation",
    "ta-curves": "mtml.analysis.task_attention:ta_curves",
    "paper-table": "mtml.analysis.task_attention:paper_table_analysis",
    "metalstm-oscillation": "mtml.analysis.oscillation:metalstm_oscillation",
    "transference": "mtml.analysis.transference:transference",
    "multimodal-table": "mtml.analysis.multimodal:multimodal_table",
    "multitask-table": "mtml.analysis.multitask:multitask_table",
    "optimal-attention": "mtml.analysis.multitask:optimal_attention",
    "attention-weights": "mtml.analysis.multitask:attention_weights",
    "multitask-speed": "mtml.analysis.multitask:multitask_speed",
    "multitask-curves": "mtml.analysis.multitask:multitask_curves",
    "mtl-table": "mtml.analysis.mtl_table:mtl_table",
})


def get_analysis(name: str) -> Callable:
    if name not in ANALYSES:
        raise UserError(f"analysis {name!r} is unknown; allowed: {', '.join(ANALYSES.names())}")
    return ANALYSES[name]

"""Analysis stages by name (figures and tables drawn from finished runs).

An analysis is `fn(params, metrics_root: Path, out_dir: Path) -> None`; it writes under
`metrics/analysis/<name>/`. `params['analyses']` lists which ones the pipeline runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

AnalysisFn = Callable[[dict, Path, Path], None]
ANALYSES: dict[str, AnalysisFn] = {}

# Modules that register analyses on import.
ANALYSIS_MODULES: list[str] = [
    "mtml.analysis.task_attention",
    "mtml.analysis.transference",
    "mtml.analysis.multimodal",
    "mtml.analysis.multitask",
]


def register_analysis(name: str) -> Callable[[AnalysisFn], AnalysisFn]:
    def wrap(fn: AnalysisFn) -> AnalysisFn:
        ANALYSES[name] = fn
        return fn

    return wrap


for _mod in ANALYSIS_MODULES:
    importlib.import_module(_mod)

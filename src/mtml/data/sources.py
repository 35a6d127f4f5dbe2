"""Dataset sources by name. Each turns its `datasets.<name>.options` into the prepared form.

A source is `prepare(name, options, raw_dir, out_dir, seed)`: it fetches or generates the
data under `raw_dir` (downloads, archives) and writes `out_dir` with
`mtml.data.storage.write_prepared`. `options` are validated by the source: an unknown key is a
UserError naming `datasets.<name>.options.<key>` and the allowed keys.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from mtml.errors import UserError
from mtml.utils import remove_stale_temporaries

PrepareFn = Callable[[str, dict, Path, Path, int], None]
SOURCES: dict[str, PrepareFn] = {}

# Modules that register sources; importing them fills SOURCES.
SOURCE_MODULES = [
    "mtml.data.glyphs",
    "mtml.data.shapes",
    "mtml.data.omniglot",
    "mtml.data.scenes",
    "mtml.data.cifar",
    "mtml.data.imagenet",
    "mtml.data.cub",
    "mtml.data.aircraft",
    "mtml.data.places",
]


def register_source(name: str) -> Callable[[PrepareFn], PrepareFn]:
    def wrap(fn: PrepareFn) -> PrepareFn:
        SOURCES[name] = fn
        return fn

    return wrap


def load_sources() -> dict[str, PrepareFn]:
    for mod in SOURCE_MODULES:
        importlib.import_module(mod)
    return SOURCES


def check_options(dataset: str, options: dict, allowed: dict) -> dict:
    """Fill defaults and reject unknown keys with one clear message."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(
            f"params key 'datasets.{dataset}.options.{unknown[0]}' is unknown; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return {**allowed, **options}


def prepare_dataset(name: str, config: dict, raw_dir: Path, out_dir: Path, seed: int) -> Path:
    """Prepare dataset `name` (its params entry `config`) into `out_dir`, downloads in `raw_dir`."""
    sources = load_sources()
    source = config.get("source")
    if source not in sources:
        raise UserError(
            f"params key 'datasets.{name}.source' is {source!r}; allowed: {', '.join(sorted(sources))}"
        )
    out_dir = Path(out_dir)
    remove_stale_temporaries(out_dir)  # a killed earlier prepare's, before this one's long work
    sources[source](name, dict(config.get("options") or {}), Path(raw_dir), out_dir, seed)
    return out_dir

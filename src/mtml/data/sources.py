"""Dataset sources by name. Each turns its `datasets.<name>.options` into the prepared form.

A source is `prepare(name, options, raw_dir, out_dir, seed)`: it fetches or generates the
data under `raw_dir` (downloads, archives) and writes `out_dir` with
`mtml.data.storage.write_prepared`. Its options are declared next to it (`@declare`): the
declarations are checked by `params.validate` (both front doors), before anything runs.

SOURCES is the one table of sources, resolved lazily: checking a name imports nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from mtml.errors import UserError
from mtml.options import Option
from mtml.options import check_options as _check_declared
from mtml.registry import Registry

PrepareFn = Callable[[str, dict, Path, Path, int], None]
# check(options, dataset) -> options: the checks declarations cannot state (one option
# against another); pure (no file access), run at validate time after the declared checks.
CheckFn = Callable[[dict, str], dict]

SOURCES = Registry("source", {
    "glyphs": "mtml.data.glyphs:prepare",
    "shapes": "mtml.data.shapes:prepare",
    "omniglot": "mtml.data.omniglot:prepare",
    "scenes": "mtml.data.scenes:prepare",
    "cifar-fs": "mtml.data.cifar:prepare_cifar_fs",
    "fc100": "mtml.data.cifar:prepare_fc100",
    "miniimagenet": "mtml.data.imagenet:prepare_mini",
    "tieredimagenet": "mtml.data.imagenet:prepare_tiered",
    "cub": "mtml.data.cub:prepare",
    "aircraft": "mtml.data.aircraft:prepare",
    "miniplaces": "mtml.data.places:prepare",
})


def declare(options: Mapping[str, Option], check: CheckFn | None = None) -> Callable[[PrepareFn], PrepareFn]:
    """Attach a source's declared options (and its cross-option check) to its prepare function."""
    def wrap(fn: PrepareFn) -> PrepareFn:
        fn.options = options
        fn.check = check
        return fn

    return wrap


def load_sources() -> Registry:
    return SOURCES


def check_options(dataset: str, options: dict, allowed: Mapping) -> dict:
    """Fill defaults and reject unknown keys and bad values with one clear message.

    `allowed` is a source's declarations ({key: Option}), or plain defaults ({key: value};
    then only the keys are checked)."""
    if all(isinstance(o, Option) for o in allowed.values()):
        return _check_declared(options, allowed, f"datasets.{dataset}.options")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(
            f"params key 'datasets.{dataset}.options.{unknown[0]}' is unknown; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return {**allowed, **options}


def check_dataset(name: str, config: dict) -> dict:
    """A dataset entry's options checked against its source's declarations, defaults filled."""
    prepare = SOURCES.resolve(config.get("source"), f"datasets.{name}.source")
    opts = _check_declared(config.get("options"), prepare.options, f"datasets.{name}.options")
    return prepare.check(opts, name) if prepare.check else opts


def prepare_dataset(name: str, config: dict, raw_dir: Path, out_dir: Path, seed: int) -> Path:
    """Prepare dataset `name` (its params entry `config`) into `out_dir`, downloads in `raw_dir`."""
    check_dataset(name, config)
    out_dir = Path(out_dir)
    from mtml.utils import remove_stale_temporaries  # (torch: not at import, so names check without it)

    remove_stale_temporaries(out_dir)  # a killed earlier prepare's, before this one's long work
    SOURCES[config["source"]](name, dict(config.get("options") or {}), Path(raw_dir), out_dir, seed)
    return out_dir

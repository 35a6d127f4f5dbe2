"""The settings of a multimodal experiment (`experiments.<name>.options`), checked once.

    options:
      image_shape: [3, 28, 28]     # every mode is brought to [channels, height, width]
      mode_mix: [1, 1, 1]          # per-mode sampling weights (list in mode order, or
                                   # {dataset: weight}); default uniform
      batch_mix: independent       # independent: each task draws its mode from mode_mix;
                                   # balanced: every meta-batch holds the modes in the
                                   # proportions of mode_mix (MMAML's sampler)
      transference: {...}          # settings of the `transference` analysis (see below)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from mtml.errors import UserError
from mtml.options import Option, check_options
from mtml.options import defaults as option_defaults
from mtml.params import experiment

BATCH_MIXES = ("independent", "balanced")   # how a meta-batch draws its modes (mtml.multimodal.sampler)
OPTIONS = {
    "image_shape": Option(list, [3, 28, 28], "every mode is brought to [channels, height, width]",
                          items=int, length=3),
    "mode_mix": Option((list, dict), None, "per-mode sampling weights (list in mode order, or "
                       "{dataset: weight}); null: uniform", items=float),
    "batch_mix": Option(str, "independent", "independent: each task draws its mode from mode_mix | "
                        "balanced: every meta-batch holds the modes in mode_mix's proportions",
                        choices=BATCH_MIXES),
    "transference": Option(dict, {}, "settings of the transference analysis"),
}
OPTION_DEFAULTS = option_defaults(OPTIONS)
TRANSFERENCE_OPTIONS = {
    "methods": Option(list, None, "method names; null: those whose algorithm is maml or mmaml-kml", items=str),
    "sources": Option(int, 48, "meta-train source tasks i", min=1),
    "targets": Option(int, 2, "meta-test target tasks j per mode", min=1),
    "step_size": Option(float, 0.01, "SGD step of the one-task meta-update theta_i^{t+1}", min=0),
    "retrain_iterations": Option(int, 100, "short retrain from the initialisation, snapshotted", min=0),
    "snapshots": Option(int, 3, "evenly spaced snapshots of the retrain (0 and the end included)", min=1),
}
TRANSFERENCE_DEFAULTS = option_defaults(TRANSFERENCE_OPTIONS)
MIN_SIZE = 16  # Conv-4 halves the image four times


@dataclass(frozen=True)
class MultimodalConfig:
    experiment: str
    modes: tuple[str, ...]          # dataset of mode 0, 1, ...
    image_shape: tuple[int, int, int]
    mode_mix: tuple[float, ...]     # probabilities, sum 1
    transference: dict
    batch_mix: str = "independent"  # how a meta-batch's modes are drawn (BATCH_MIXES)


def _key(exp: str, *path) -> str:
    return "params key 'experiments." + ".".join([exp, "options", *map(str, path)]) + "'"


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and bool(np.isfinite(v))


def _image_shape(exp: str, value) -> tuple[int, int, int]:
    if value[0] not in (1, 3) or min(value[1:]) < MIN_SIZE:
        raise UserError(f"{_key(exp, 'image_shape')} must be [channels, height, width] with channels "
                        f"1 or 3 and height, width >= {MIN_SIZE}; got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _mode_mix(exp: str, value, modes: tuple[str, ...]) -> tuple[float, ...]:
    where = _key(exp, "mode_mix")
    if value is None:
        return tuple([1.0 / len(modes)] * len(modes))
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(modes))
        if unknown:
            raise UserError(f"{where} names {unknown[0]!r}, not a mode; modes: {', '.join(modes)}")
        value = [value.get(m, 0) for m in modes]
    if not isinstance(value, list | tuple) or len(value) != len(modes):
        raise UserError(f"{where} must give one weight per mode ({len(modes)}: {', '.join(modes)}), "
                        f"as a list or a mapping dataset -> weight; got {value!r}")
    if not all(_is_number(v) and v >= 0 for v in value) or sum(value) <= 0:
        raise UserError(f"{where} must hold numbers >= 0 with a positive sum; got {value!r}")
    total = float(sum(value))
    return tuple(float(v) / total for v in value)


def _transference(params: dict, exp: str, value) -> dict:
    opts = check_options(value, TRANSFERENCE_OPTIONS, f"experiments.{exp}.options.transference")
    methods = opts["methods"]
    if methods is not None:
        for m in methods:
            if m not in params["methods"]:
                raise UserError(f"{_key(exp, 'transference', 'methods')} names {m!r}; "
                                f"defined methods: {', '.join(params['methods'])}")
    return opts


def multimodal_config(params: dict, exp: str) -> MultimodalConfig:
    """Validated settings of multimodal experiment `exp`; UserError names the bad key."""
    cfg = experiment(params, exp)
    modes = (cfg["dataset"], *cfg.get("modes", []))
    repeated = sorted({m for m in modes if modes.count(m) > 1})
    if repeated:
        raise UserError(f"params key 'experiments.{exp}.modes' repeats dataset {repeated[0]!r} "
                        f"(the experiment's dataset is mode 0); list each dataset once")
    if cfg.get("cross_domain"):
        raise UserError(f"params key 'experiments.{exp}.cross_domain' is not supported by kind "
                        f"multimodal; add the dataset to 'modes' instead, or use []")
    options = check_options(cfg.get("options"), OPTIONS, f"experiments.{exp}.options",
                            unknown="is unknown for kind multimodal")
    return MultimodalConfig(exp, modes, _image_shape(exp, options["image_shape"]),
                            _mode_mix(exp, options["mode_mix"], modes),
                            _transference(params, exp, options["transference"]), options["batch_mix"])

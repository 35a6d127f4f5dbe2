"""Load and validate params (params.yaml and presets), and resolve one run of the matrix.

The JSON Schema in workflow/schemas/params.schema.yaml is the same one Snakemake's validate()
uses; on top of it we check the names that link sections (an experiment's dataset must be
defined, a method's algorithm must exist) and each method's hyperparameter keys.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from mtml.errors import UserError
from mtml.study import Study, study_name

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "params.schema.yaml"


def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def deep_merge(base: dict, override: dict) -> dict:
    """Merge like Snakemake merges --configfile over configfile: nested dicts key by key."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _fill_defaults(instance, schema, root):
    if "$ref" in schema:
        ref = schema["$ref"].split("/")[-1]
        schema = {**root["definitions"][ref], **{k: v for k, v in schema.items() if k != "$ref"}}
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(value, extra, root)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _message(err: jsonschema.ValidationError, schema: dict) -> str:
    key = _key(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        where = f"{key}.{extra[0]}" if err.absolute_path else extra[0]
        return f"params key '{where}' is unknown; allowed: {', '.join(allowed)}"
    if err.validator == "enum":
        return f"params key '{key}' is {err.instance!r}; allowed: {', '.join(map(str, err.validator_value))}"
    if err.validator == "required":
        return f"params key '{key}' lacks {err.message.split(' is a required')[0]}; see workflow/schemas/params.schema.yaml"
    return f"params key '{key}': {err.message}"


def validate(params: dict) -> dict:
    """Return a validated copy with defaults filled; raise UserError with one clear message."""
    schema = _schema()
    params = copy.deepcopy(params or {})
    # the draft the schema declares (2020-12), as Snakemake's validate() uses
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        raise UserError(_message(errors[0], schema))
    # An experiment's `training` block overrides only the keys it names: keep the schema's
    # defaults out of it, or they would replace the top-level values.
    overrides = {n: dict(e["training"]) for n, e in params["experiments"].items()
                 if isinstance(e, dict) and isinstance(e.get("training"), dict)}
    _fill_defaults(params, schema, schema)
    for name, given in overrides.items():
        params["experiments"][name]["training"] = given
    datasets = params["datasets"]
    for name, exp in params["experiments"].items():
        for key_name, names in (("dataset", [exp["dataset"]]), ("modes", exp["modes"]),
                                ("cross_domain", exp["cross_domain"])):
            for ds in names:
                if ds in datasets:
                    continue
                key = f"experiments.{name}.{key_name}"
                raise UserError(f"params key '{key}' names dataset {ds!r}; defined datasets: {', '.join(datasets)}")
    from mtml.analysis.registry import ANALYSES

    for i, a in enumerate(params["analyses"]):
        if a not in ANALYSES:
            raise UserError(f"params key 'analyses[{i}]' is {a!r}; allowed: {', '.join(sorted(ANALYSES)) or '(none)'}")
    from mtml.methods import resolve_hparams

    for name, hp in params["methods"].items():
        resolve_hparams(name, hp or {})
    _check_method_overrides(params)
    for name in list(params["experiments"]) + list(params["methods"]) + list(datasets):
        if not name.replace("-", "").replace("_", "").replace("+", "").isalnum():
            raise UserError(f"name {name!r} in params may use letters, digits, '-', '_' and '+' only (it becomes a path)")
    return params


def read(paths) -> dict:
    """Load one or more params files (later ones override earlier ones), unvalidated."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged: dict = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserError(f"params file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"params file {p} is not valid YAML: {err}") from None
        merged = deep_merge(merged, data)
    return merged


def study(params: dict, files=()) -> Study:
    """The `Study` of a params dict (validated here) read from `files`."""
    params = validate(params)
    return Study(params, study_name(params, files), tuple(map(str, files)))


def load(paths) -> Study:
    """Load, validate and resolve params files into a `Study` (its name: `study:`, else the
    last file's stem; params.yaml is the study `default`)."""
    files = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return study(read(files), files)


def _check_method_overrides(params: dict) -> None:
    """Experiment-level method overrides name defined methods and keep their algorithm (their
    values are checked when the study resolves each run)."""
    for exp_name, exp in params["experiments"].items():
        for meth, over in exp.get("methods", {}).items():
            key = f"experiments.{exp_name}.methods.{meth}"
            if meth not in params["methods"]:
                raise UserError(f"params key '{key}' names method {meth!r}; defined methods: "
                                f"{', '.join(params['methods'])}")
            if "algorithm" in (over or {}):
                raise UserError(f"params key '{key}.algorithm': an experiment may change a method's "
                                f"hyperparameters, not its algorithm; define another method instead")


def experiment(params: dict, name: str) -> dict:
    """An experiment's validated params entry (for the kinds' option checks)."""
    if name not in params["experiments"]:
        raise UserError(f"experiment {name!r} is not in params; defined: {', '.join(params['experiments'])}")
    return params["experiments"][name]

"""Load and validate params (params.yaml and presets), and resolve one run of the matrix.

The base JSON Schema (params.schema.yaml, shipped in this package) checks the structure; on
top of it we check the names that link sections (an experiment's dataset must be defined, a
method's algorithm must exist) and every method hyperparameter and dataset option against its
declaration (mtml.options), each mistake as one line naming the key. `params_schema()` is the
base schema with those declarations merged in: what Snakemake's validate() uses.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from mtml.errors import UserError
from mtml.study import Study, study_name

SCHEMA_RESOURCE = "params.schema.yaml"


def _schema() -> dict:
    """The base schema (structure only), read from the installed package."""
    return yaml.safe_load(resources.files("mtml").joinpath(SCHEMA_RESOURCE).read_text())


def params_schema() -> dict:
    """The params JSON Schema with every declared method hyperparameter and dataset option:
    under `methods.<name>` per `algorithm` and under `datasets.<name>.options` per `source`
    (if/then). A method entry without `algorithm` (it defaults to the entry's name, which
    JSON Schema cannot see) is checked by `validate` only."""
    from mtml.data.sources import SOURCES
    from mtml.methods import METHODS
    from mtml.options import options_schema

    schema = _schema()
    props = schema["properties"]
    method = props["methods"]["additionalProperties"]
    method["properties"]["algorithm"]["enum"] = METHODS.names()
    method["allOf"] = [
        {"if": {"required": ["algorithm"], "properties": {"algorithm": {"const": name}}},
         "then": {"properties": options_schema(METHODS[name].options)}}
        for name in METHODS.names()]
    from mtml.search import OPTIONS as SEARCH_OPTIONS

    props["search"]["additionalProperties"] = {"type": "object", "additionalProperties": False,
                                               "properties": options_schema(SEARCH_OPTIONS)}
    dataset = props["datasets"]["additionalProperties"]
    dataset["properties"]["source"]["enum"] = SOURCES.names()
    dataset["allOf"] = [
        {"if": {"properties": {"source": {"const": name}}},
         "then": {"properties": {"options": {"type": "object", "additionalProperties": False,
                                             "properties": options_schema(SOURCES[name].options)}}}}
        for name in SOURCES.names()]
    return schema


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
        return f"params key '{key}' lacks {err.message.split(' is a required')[0]}; see `python -m mtml schema`"
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
    from mtml.data.sources import check_dataset

    for i, a in enumerate(params["analyses"]):
        ANALYSES.check(a, f"analyses[{i}]")
    for name, config in datasets.items():
        check_dataset(name, config)
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
        merged = deep_merge(merged, read_file(p))
    return merged


def _duplicates(node: yaml.Node, path: str, p: Path) -> None:
    """UserError for the first mapping key given twice (YAML itself keeps the last silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            where = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                if key in seen:
                    raise UserError(f"params file {p} gives key '{where}' twice (lines {seen[key]} and "
                                    f"{k.start_mark.line + 1}); YAML would keep only the second: delete one")
                seen[key] = k.start_mark.line + 1
            _duplicates(v, where, p)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _duplicates(v, f"{path}[{i}]", p)


def read_file(p) -> dict:
    """One params file as a dict: a UserError if it is missing, not YAML, or repeats a key."""
    p = Path(p)
    if not p.exists():
        raise UserError(f"params file {p} does not exist")
    text = p.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _duplicates(node, "", p)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"params file {p} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"params file {p} must be a mapping of params keys; got {type(data).__name__}")
    return data


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

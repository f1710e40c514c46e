"""A study's configuration: the workflow's schema is where every setting and its default is declared.

The Snakefile validates a study with it before any job runs. Commands that are handed one
section of a study (``ptft derive --config``) fill that section's defaults from the same schema
(:func:`complete`), so no default is written twice.
"""

from __future__ import annotations

import functools
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def load_study(configfile: str | Path) -> dict:
    """A study file, validated against the workflow's schema with its defaults filled in."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(Path(configfile).read_text())
    validate(config, str(SCHEMA), set_default=True)
    return config


def complete(path: str, value: dict | None) -> dict:
    """``value``, the setting at the dotted config ``path`` (e.g. ``derive.checks``), validated
    against its part of the schema, with its defaults filled in (a new dict)."""
    import copy

    from jsonschema import Draft202012Validator, validators

    node = schema()
    for key in path.split("."):
        node = node["properties"][key]
    part = {**node, "$defs": schema().get("$defs", {})}

    def set_defaults(validator, properties, instance, sub):
        for name, subschema in properties.items():
            if isinstance(instance, dict) and "default" in subschema:
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, sub)

    filling = validators.extend(Draft202012Validator, {"properties": set_defaults})
    out = copy.deepcopy(value) if value is not None else {}
    error = next(iter(filling(part).iter_errors(out)), None)
    if error is not None:
        where = ".".join([path, *map(str, error.absolute_path)])
        raise ValueError(f"{where}: {error.message}")
    return out

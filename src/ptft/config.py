"""A study's configuration: the workflow's schema is where every setting and its default is declared.

The Snakefile validates a study with it before any job runs (:func:`validate_study`: an error is
one line naming the key). Commands that are handed one
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


class ConfigError(ValueError):
    """A study that does not fit the schema; the message is one line naming the key."""


def load_study(configfile: str | Path) -> dict:
    """A study file, validated against the workflow's schema with its defaults filled in."""
    import yaml

    return validate_study(yaml.safe_load(Path(configfile).read_text()))


def _filling_validator(part: dict):
    """A validator of ``part`` that fills in the defaults of the keys an instance leaves out."""
    import copy

    from jsonschema import Draft202012Validator, validators

    def set_defaults(validator, properties, instance, sub):
        for name, subschema in properties.items():
            if isinstance(instance, dict) and "default" in subschema:
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, sub)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(part)


def _key(path: list) -> str:
    """A config key as the docs write it: ``checkpoints.local[1].name``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _message(error) -> str:
    """The error's one line, with a long offending value cut short."""
    value = repr(error.instance)
    message = " ".join(error.message.split())
    if len(value) > 80:
        message = message.replace(" ".join(value.split()), value[:60] + "...")
    return message if len(message) <= 300 else message[:297] + "..."


def _check(part: dict, value, path: list[str]) -> None:
    """Fill ``value``'s defaults in place; raise on its most relevant error, one line naming the key."""
    from jsonschema.exceptions import best_match

    error = best_match(_filling_validator(part).iter_errors(value))
    if error is not None:
        key = _key([*path, *error.absolute_path])
        where = f"config key {key}" if key else "config"
        raise ConfigError(f"{where}: {_message(error)} (every key: {SCHEMA.relative_to(SCHEMA.parents[2])})")


def validate_study(config: dict) -> dict:
    """``config`` checked against the workflow's schema and its defaults filled in (in place, returned).

    Unlike Snakemake's ``validate``, the error is one line (the key, the value shortened, the
    rule it breaks), not the error followed by the whole schema.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"config: a study is a mapping of keys, not {type(config).__name__}")
    _check(schema(), config, [])
    return config


def complete(path: str, value: dict | None) -> dict:
    """``value``, the setting at the dotted config ``path`` (e.g. ``derive.checks``), validated
    against its part of the schema, with its defaults filled in (a new dict)."""
    import copy

    node = schema()
    for key in path.split("."):
        node = node["properties"][key]
    out = copy.deepcopy(value) if value is not None else {}
    _check({**node, "$defs": schema().get("$defs", {})}, out, path.split("."))
    return out

"""Variant specs and their instruction templates.

A template file (YAML, under ``workflow/templates/derive/`` by default) holds ``version``,
``factor``, ``system`` and ``user``; ``user`` has one ``{text}`` placeholder for the input.
The version is part of every cache key, and so is the rendered instruction itself, so an
edited template never reuses a stale reply even if its version was not bumped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Variant:
    name: str  # e.g. "style:casual"
    factor: str  # the factor it changes: topic, style, facts, ...
    version: str
    system: str
    user: str

    def messages(self, text: str) -> tuple[dict, ...]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        return (*out, {"role": "user", "content": self.user.replace("{text}", text)})


def load_variant(spec: dict, root: str | Path = ".") -> Variant:
    """A variant from its config entry ``{name, factor?, template}``; errors name the variant and file."""
    name = spec["name"]
    path = Path(root) / spec["template"]
    if not path.is_file():
        raise FileNotFoundError(f"derive.variants: template of variant {name!r} not found: {path}")
    body = yaml.safe_load(path.read_text())
    missing = [k for k in ("version", "user") if not isinstance(body, dict) or k not in body]
    if missing:
        raise ValueError(f"derive.variants: template {path} of variant {name!r} lacks {missing}")
    if body["user"].count("{text}") != 1:
        raise ValueError(f"derive.variants: template {path} of variant {name!r} needs exactly one {{text}} in 'user'")
    factor = spec.get("factor") or body.get("factor")
    if not factor:
        raise ValueError(f"derive.variants: variant {name!r} names no factor (in the config or {path})")
    return Variant(name, factor, str(body["version"]), body.get("system", ""), body["user"])

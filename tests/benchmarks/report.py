"""Shared by the benchmark scripts: print a result and keep it as JSON."""

import json


def emit(result: dict, out: str | None) -> None:
    print(json.dumps(result, indent=2))
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)

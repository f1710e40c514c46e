"""Argument types and set-up shared by every stage's sub-commands."""

from __future__ import annotations

import argparse
import json


def json_arg(text: str):
    """An argument given as JSON (a config section, a model's metadata)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def set_threads(n: int) -> None:
    """Torch's intra-op threads for a job given ``n`` cores by the workflow."""
    import torch

    torch.set_num_threads(max(1, n))

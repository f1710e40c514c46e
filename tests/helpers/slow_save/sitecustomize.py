"""Slows ``ptft.finetune.state.save`` by ``PTFT_TEST_SLOW_SAVE`` seconds, for the SLURM tests.

On PYTHONPATH, Python imports this in every process it starts (Snakemake's too); without the
variable it does nothing. With it, once ``ptft.finetune.state`` is imported, its ``save`` sleeps
first: a state as slow to save as a large model's, which the end of the SLURM job step would cut
short unless the step waits for the trainer (the finetune rule's ``exec``).
"""

import importlib.util
import os
import sys
import time

TARGET = "ptft.finetune.state"


class _SlowSave:
    """A finder that wraps the module's save once it is loaded, then steps aside."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module, seconds = spec.loader.exec_module, self.seconds

        def exec_and_patch(module):
            exec_module(module)
            save = module.save

            def slow_save(*args, **kwargs):
                time.sleep(seconds)
                return save(*args, **kwargs)

            module.save = slow_save

        spec.loader.exec_module = exec_and_patch
        return spec


if seconds := float(os.environ.get("PTFT_TEST_SLOW_SAVE") or 0):
    sys.meta_path.insert(0, _SlowSave(seconds))

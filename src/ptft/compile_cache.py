"""One folder of ``torch.compile``'s kernels for every job of a workflow.

Inductor keeps what it compiled (its FX graph cache, and Triton's binaries beneath it) in
``TORCHINDUCTOR_CACHE_DIR``, by default a folder of the node's ``/tmp``. On a cluster each job may
land on another node and compiles from scratch: on one H200 an evaluation job's first passes
cost about 190 s more than its timed passes (``docs/performance.md``), once for each of a study's
models. Jobs that share the folder compile a graph once and load it afterwards (on this project's
2-core CPU, a 4-layer model's compiled forward: 27.1 s cold, 6.0 s from the cache). Inductor writes
its entries whole (a temporary file renamed), so concurrent jobs may share the folder.
"""

import os
from pathlib import Path

ENV = "TORCHINDUCTOR_CACHE_DIR"


def share(results: str | Path) -> str:
    """Point ``torch.compile``'s cache at ``results/.cache/torchinductor`` for this process and the
    commands it starts, unless the user has chosen a folder; the folder in use."""
    return os.environ.setdefault(ENV, str(Path(results).absolute() / ".cache" / "torchinductor"))

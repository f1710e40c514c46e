"""Sharded data-parallel fine-tuning (PyTorch FSDP2) over the processes ``torchrun`` starts in one job.

A run with ``finetune.gpus: N`` (N > 1) runs as N processes on one node, one per GPU (on a
machine without CUDA, N CPU processes over gloo, which is how the tests check it). ``ptft
finetune --gpus N`` starts them itself (:func:`ptft.finetune.cli.launch`), so the rule and the command line are the same
whatever N. Every process loads the checkpoint and lets the method prepare the model, then
:func:`shard` splits each transformer block's parameters, gradients and optimizer state over the
N processes (``fully_shard`` per block, then the root), which is what lets a 7B model's ~16 bytes
a parameter fit.

What stays as in one process, so that N processes train the same model as one:

- The optimizer step sees the same examples: each micro-batch of the one-process run is split
  into N contiguous parts (:func:`share`); a process whose part is empty runs the micro-batch's
  first example at weight 0, since every process must take part in every forward and backward
  (their all-gathers and reduce-scatters are collective).
- The loss is normalised by the step's target count summed over the processes, and the
  gradients are summed (not averaged) across them, so the update is the one-process update up
  to the order of float additions.
- The state is saved sharded (:func:`save_state`, PyTorch's distributed checkpoint: each process
  writes its shards) and loaded by any number of processes, resharded as it loads
  (:func:`load_state`); a state saved by one process (``state.pt``) loads sharded too, and a
  sharded one loads into one process (:mod:`ptft.finetune.state`).
- A model folder (the result, a snapshot) is gathered to process 0 and saved there by the
  method's own ``save``, from a copy of the module tree whose parameters were on the meta device
  until the gathered weights fill them (:class:`Gathered`).
- Validation, probes and the loss shortcuts' check run on every process on the same data (their
  forwards are collective too); process 0 keeps the rows and writes every output.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

SHARDED_DIR = "state.sharded"  # the sharded state's folder in the run's state folder
EXTRA_FILE = "progress.pt"  # step, progress and fingerprint, written by process 0
RNG_FILE = "rng.{rank}.pt"  # each process's random streams


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def sharded(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Process 0, which writes the run's outputs and logs its progress."""
        return self.rank == 0


def world() -> World:
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def start(w: World) -> str:
    """Join the process group (NCCL on GPUs, gloo on CPUs); the device this process trains on."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(w.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if not w.main:  # one progress log per run, not one per process
        logging.getLogger("ptft").setLevel(logging.WARNING)
    return f"cuda:{w.local_rank}" if cuda else "cpu"


def finish() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def layer_classes(model) -> set[str]:
    """Class names of the model's transformer blocks: what ``transformers`` never splits across devices."""
    names = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    return names


def shard(model, precision: str):
    """``fully_shard`` each transformer block, then the root (embeddings, final norm, heads).

    Gradients are summed across the processes: each process's loss is already divided by the
    step's total target count, so their sum is the one-process gradient. Summing (instead of
    FSDP's average) also avoids the pre-scaled sum that gloo lacks.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    # bf16 runs gather their weights in bf16 (half the traffic) and reduce gradients in fp32;
    # autocast still casts as it does in one process.
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if precision == "bf16" and device_type == "cuda" else MixedPrecisionPolicy())  # fmt: skip
    blocks = layer_classes(model)
    if not blocks:
        raise ValueError(f"finetune.gpus: {type(model).__name__} names no transformer block (_no_split_modules); "
                         "cannot shard it")  # fmt: skip
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def share(indices: list[int], w: World) -> tuple[list[int], bool]:
    """This process's part of a micro-batch (contiguous, sizes differing by at most one), and whether it
    is real; an empty part is the micro-batch's first example, to be run at weight 0."""
    n, k = len(indices), w.size
    lo, hi = -(-w.rank * n // k), -(-(w.rank + 1) * n // k)  # the larger parts first
    return (indices[lo:hi], True) if hi > lo else (indices[:1], False)


def all_sum(values: list[float], device) -> list[float]:
    """``values`` summed over the processes (float64), in one collective; as given in one process."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_of(flag: bool, device) -> bool:
    """Whether ``flag`` holds on any process; ``flag`` itself in one process."""
    if not dist.is_initialized():
        return flag
    return all_sum([float(flag)], device)[0] > 0


def same_on_all(value, w: World):
    """Process 0's ``value`` on every process: decisions taken from float comparisons must agree,
    or the processes would run different collectives and wait for each other forever."""
    if not w.sharded:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def full_norm(norm):
    """A gradient norm as a plain tensor (a sharded model's is a DTensor over the processes' shards)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


class Gathered:
    """Writes a sharded model's folder on process 0, with the method's own ``save``.

    ``skeleton`` is a copy of the model's module tree made before sharding, whose parameters and
    buffers are on the meta device (no memory): process 0 fills it with the gathered weights (on
    the CPU), calls ``write(skeleton)``, and empties it again.
    """

    def __init__(self, model):
        memo = {}
        for tensor in [*model.parameters(), *model.buffers()]:
            meta = torch.empty_like(tensor, device="meta")
            is_param = isinstance(tensor, torch.nn.Parameter)
            memo[id(tensor)] = torch.nn.Parameter(meta, tensor.requires_grad) if is_param else meta
        self.skeleton = copy.deepcopy(model, memo)

    def write(self, model, write) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Collective: every process sends its shards; process 0 receives the whole on the CPU.
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if world().main:
            self.skeleton.load_state_dict(full, strict=False, assign=True)
            # Buffers are not sharded; the ones outside the state dict (rotary frequencies) are set directly.
            for name, buffer in model.named_buffers():
                owner, _, leaf = name.rpartition(".")
                self.skeleton.get_submodule(owner)._buffers[leaf] = buffer.detach().to("cpu", copy=True)
            if hasattr(self.skeleton, "tie_weights"):
                self.skeleton.tie_weights()
            try:
                write(self.skeleton)
            finally:
                self.skeleton.to("meta")
        dist.barrier()


# -- The sharded training state: any number of processes saves it and loads it.


def state_dicts(model, optimizer):
    """The trainable weights and the optimizer's state keyed by parameter name, sharded as the model is."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))


def save_state(folder: Path, model, optimizer, extra: dict, rng: dict) -> None:
    """Write the sharded state into ``folder`` (replacing it as a whole: a stop mid-write keeps the last one).

    Every process writes its shards and its random streams into ``folder``'s temporary twin;
    process 0 writes ``extra`` (step, progress, fingerprint) and swaps the folders once all are done.
    """
    import torch.distributed.checkpoint as dcp

    rank = world().rank
    tmp = folder.with_name(folder.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    model_sd, optim_sd = state_dicts(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp)
    torch.save(rng, tmp / RNG_FILE.format(rank=rank))
    if rank == 0:
        torch.save(extra, tmp / EXTRA_FILE)
    _barrier()
    if rank == 0:
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


def read_extra(folder: Path) -> dict:
    """Process 0's step, progress and fingerprint of a sharded state (an error if the folder is incomplete)."""
    if not (folder / ".metadata").exists():
        raise FileNotFoundError(f"{folder}: no .metadata; the sharded state was not completely written")
    return torch.load(folder / EXTRA_FILE, weights_only=True, map_location="cpu")


def load_state(folder: Path, model, optimizer) -> dict:
    """Load a sharded state into ``model`` and ``optimizer``, sharded over however many processes run now
    (one included: the shards are then assembled into whole tensors); this process's random streams
    (process 0's for a process the saving run did not have)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    model_sd, optim_sd = state_dicts(model, optimizer)
    both = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(both, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"],
                   options=StateDictOptions(strict=False))  # fmt: skip
    own = folder / RNG_FILE.format(rank=world().rank)
    return torch.load(own if own.exists() else folder / RNG_FILE.format(rank=0), weights_only=True)


def load_whole_state(saved: dict, model, optimizer, names: list[str]) -> None:
    """Load a one-process ``state.pt`` (its optimizer state keyed by position in ``names``, the trainable
    parameters' names) into a sharded model: each process keeps its shard of every tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    osd = saved["optimizer"]
    by_name = {
        "state": {names[i]: s for i, s in osd["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]],
    }
    set_state_dict(model, optimizer, model_state_dict=saved["model"], optim_state_dict=by_name,
                   options=StateDictOptions(full_state_dict=True, strict=False))  # fmt: skip


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()

"""Supervised fine-tuning of one checkpoint on one task: one loop, read top to bottom.

    ptft finetune --checkpoint results/toy/checkpoints/step200 --train results/toy/data/train/toy_nli.parquet \
        --task toy_nli --method full --config '<json of the finetune section>' --lr 1e-3 --seed 0 \
        --out-dir results/toy/finetune/... --state-dir results/toy/.state/finetune/...

Loss on completion tokens only, summed over the completion tokens of an optimizer step and
divided by their number, so every token weighs the same whatever its micro-batch (a preference
method's loss is per pair instead). AdamW (or RMSprop), linear warmup then linear decay (or a
constant lr; :mod:`ptft.finetune.optim`), gradient clipping at ``max_grad_norm``. Micro-batches are
packed without padding (or length-grouped, see :mod:`ptft.finetune.batching`), and the LM head
runs only on the positions that have a target: for classification that is one or two tokens
per example instead of all of them, which is most of the head's cost with a 50k vocabulary.
Both shortcuts are checked against the plain ``model(...).logits`` loss on the first examples
before training; a model on which they differ falls back to the plain path, with a warning.

:func:`finetune` loads the checkpoint and the data, lets the method (:mod:`ptft.finetune.methods`)
prepare the model, runs :func:`train_loop` (setup, resume, then per optimizer step: log, probe,
snapshot, checkpoint), scores the validation split, and writes the :class:`RunRecord` and the
model as the method saves it (or, with ``snapshots.select: best_validation``, the best snapshot).
Resumption and stop signals are in :mod:`ptft.finetune.state`, probes in
:mod:`ptft.finetune.probes`, snapshots in :mod:`ptft.finetune.snapshots`; a run over several GPUs
(``finetune.gpus``) runs the same loop in each of its processes, each on its part of every
micro-batch (:mod:`ptft.finetune.sharded`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import resource
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ptft import io, provenance, signals
from ptft.checkpoints.load import load_pretrained
from ptft.data.registry import get_dataset
from ptft.finetune import bf16_weights, compiled, graphs, heads, optim, probes, sharded, snapshots, state
from ptft.finetune.batching import (
    collate,
    collate_padded,
    example_length,
    has_target,
    make_batches,
    sequences,
    step_weight,
    to_device,
    with_targets,
)
from ptft.finetune.grad_buffers import KeptGrads
from ptft.finetune.loss import classifier_loss, completion_loss
from ptft.finetune.methods import RunInputs, get_method, unwrap
from ptft.finetune.packed_attention import use_packed_attention

log = logging.getLogger(__name__)

# Dense bf16 peak of the accelerators a study is likely to run on, for the MFU estimate.
PEAK_BF16_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "A6000": 155e12, "L40S": 362e12, "V100": 125e12}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def count_steps(n_examples: int, cfg: dict) -> int:
    """Optimizer steps of a run: ``epochs`` over the examples, at most ``max_steps``."""
    steps = math.ceil(math.ceil(n_examples / cfg["batch_size"]) * cfg["epochs"] / cfg["grad_accum"])
    return min(steps, cfg.get("max_steps") or steps)


def gradient_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The total L2 norm of the gradients (of the whole model, where it is sharded)."""
    grads = [p.grad for p in params if p.grad is not None]
    narrow = [g.dtype.itemsize < 4 for g in grads]
    if not any(narrow):
        return sharded.full_norm(torch.nn.utils.get_total_norm(grads))
    # bf16 gradients (bf16_weights): each tensor's norm in fp32, and combined in the order get_total_norm
    # combines fp32 ones, so that the norm, hence the clipping, is the one of their fp32 widening
    norms = {}
    for kind, dtype in ((False, None), (True, torch.float32)):
        at = [i for i, n in enumerate(narrow) if n == kind]
        if at:
            norms |= zip(at, torch._foreach_norm([grads[i] for i in at], 2.0, dtype=dtype), strict=True)
    return sharded.full_norm(torch.linalg.vector_norm(torch.stack([norms[i] for i in range(len(grads))])))


def clip_coefficient(norm: float, max_norm: float) -> float:
    """What ``clip_grad_norm_`` multiplies the gradients by: ``max_norm / (norm + 1e-6)``, at most 1."""
    return min(1.0, max_norm / (norm + 1e-6))


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> float:
    """``clip_grad_norm_`` that skips the rescaling pass over every gradient when it would be
    a multiplication by 1 (the usual case after warmup); returns the norm before clipping."""
    norm = gradient_norm(params)
    value = float(norm)
    if clip_coefficient(value, max_norm) < 1:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return value


# check_shortcuts runs on the last this many tokens of each sequence it checks: what it checks is the
# model's, not the data's, and in fp32 on four XSum-length rows its forwards took 0.4 s of an OLMo-1B
# job's setup on an H100.
CHECK_TOKENS = 128


@torch.no_grad()
def check_shortcuts(model, examples, batching: str, pad_id: int, device, kept: KeptGrads | None = None):
    """(batching, fast head) that reproduce the plain padded ``model(...).logits`` loss, checked on the
    last :data:`CHECK_TOKENS` tokens of the first examples (whole, where that cut leaves no target).

    ``kept`` is switched off (``kept.active = False``) if its path does not reproduce it either.
    """
    was_training = model.training
    model.eval()
    sample = []
    for ids, labels in sequences(examples[:4]):
        cut = labels[-CHECK_TOKENS:]
        sample.append((ids[-CHECK_TOKENS:], cut) if has_target(cut) else (ids, labels))
    padded = collate_padded(sample, pad_id, device)
    ref = completion_loss(model, padded, fast=False)

    def same(loss):
        return bool(torch.isclose(loss, ref, rtol=1e-4, atol=1e-4))

    fast = same(completion_loss(model, padded, fast=True))
    if not fast:
        log.warning("this model's logits are not lm_head(hidden states); computing full logits (slower)")
    if batching == "packed" and not same(completion_loss(model, collate(sample, "packed", pad_id, device), fast)):
        log.warning("this model ignores position_ids when masking packed sequences; using grouped batches")
        batching = "grouped"
    if kept is not None and kept.active and not (fast and same(completion_loss(model, padded, True, kept))):
        log.warning("this model does not take inputs_embeds as its embedding's output; gradients not kept")
        kept.active = False
    model.train(was_training)
    return batching, fast


@torch.no_grad()
def validation_loss(model, examples, batching: str, pad_id: int, batch_size: int, fast: bool, device,
                    loss_fn=completion_loss) -> float:  # fmt: skip
    """Mean loss of the validation examples per the unit the training loss is normalised by
    (:func:`ptft.finetune.batching.step_weight`): cross-entropy per completion token, or DPO's loss per pair."""
    was_training = model.training
    model.eval()
    w = sharded.world()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        part, real = sharded.share(list(range(start, min(start + batch_size, len(examples)))), w)
        batch = collate([examples[i] for i in part], batching, pad_id, device)
        loss = float(loss_fn(model, batch, fast))
        if real:
            total, count = total + loss, count + step_weight(batch)
    total, count = sharded.all_sum([total, count], device)
    model.train(was_training)
    return total / max(count, 1)


def validation_score(model, tokenizer, task, records: list[dict], fmt: str, seed: int, scoring: dict) -> float:
    """The task's primary metric, zero-shot in the training format.

    ``scoring``: the study's evaluation settings (``batch_size``, ``max_new_tokens``, ``stop``,
    ``rouge_stemmer``), as :func:`ptft.evaluate.scoring.score_items` takes them.
    """
    from ptft.evaluate.metrics import get_metric
    from ptft.evaluate.scoring import build_prompts, score_items

    items = [{**r, "idx": i} for i, r in enumerate(records)]
    model.eval()
    prompts = build_prompts(task, items, [], fmt, 0, seed, task.name)
    result = score_items(model, tokenizer, task, items, prompts, scoring)[0]
    model.train()
    metric = get_metric(result["metric"])
    if metric.aggregation == "corpus":  # Matthews correlation (CoLA) is the whole set's, not a mean
        return float(metric.corpus(result["prediction"], result["gold"]))
    return float(np.mean(result["score"]))


def context_window(model_config) -> int | None:
    """The most positions the model takes, as its config states it (the attribute differs by architecture).

    A model with absolute position embeddings (GPT-2's ``n_positions``) fails with an IndexError
    beyond it; one with rotary positions runs, but on positions it was never trained at.
    """
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(model_config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def peak_flops(device: str, cfg: dict) -> float | None:
    """The device's peak FLOP/s for the MFU estimate: ``peak_tflops`` if set, else a known GPU's bf16 peak."""
    if cfg.get("peak_tflops"):
        return cfg["peak_tflops"] * 1e12
    if device == "cuda":
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return None


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class Diverged(ValueError):
    """A step's loss or gradient norm was NaN or infinite; training stopped before applying it.

    ``result`` is the loop's record up to the last finite step (the weights are those of that step).
    """

    def __init__(self, message: str, step: int, loss: float, grad_norm: float, result: LoopResult | None = None):
        super().__init__(message)
        self.step, self.loss, self.grad_norm, self.result = step, loss, grad_norm, result


@dataclass
class LoopResult:
    """What :func:`train_loop` returns."""

    progress: state.Progress
    steps: int
    batching: str  # as run: packed falls back to grouped on a model that cannot pack (check_shortcuts)
    head_on_targets_only: bool
    examples_without_targets: int = 0  # left out of training: max_length cut away their every target


@dataclass
class RunRecord:
    """A run's ``summary.json``."""

    checkpoint: str
    task: str
    method: str
    lr: float
    seed: int
    model_dir: str
    examples: int
    examples_without_targets: int  # of ``examples``, left out of training: max_length cut away their target
    steps: int
    batching: str
    head_on_targets_only: bool
    total_tokens: int  # non-padding tokens processed
    wall_time_s: float  # training time, probes and snapshots excluded
    tokens_per_s: float
    probe_time_s: float
    snapshot_time_s: float  # saving snapshots and their validation
    n_parameters: int
    n_trainable_parameters: int
    peak_flops: float | None
    mfu: float | None
    peak_memory_bytes: int
    processes: int  # finetune.gpus: the processes (one per GPU) the run was sharded over
    final_loss: float | None
    validation: dict  # of the weights in model_dir: loss, and score with validation_score
    diverged: dict | None  # a run of an lr grid that diverged: the step, its loss and gradient norm
    ft_step: int  # the optimizer step of the weights in model_dir (as its ptft_run.json says)
    snapshots: list[dict]  # {"step", "validation"} of each snapshot, in <out_dir>/snapshots/step{N}
    selected_step: int | None  # the step snapshots.select: best_validation chose; None otherwise
    method_stats: dict  # written as top-level keys (LP-FT's lp_accuracy_before, ...)
    config: dict
    provenance: dict  # what made the run: ptft version and commit, study config hash, checkpoint (ptft.provenance)

    def summary(self) -> dict:
        out = asdict(self)
        stats, config = out.pop("method_stats"), out.pop("config")
        return {**out, **stats, "config": config}


def train_loop(
    model,
    examples: list[tuple[list[int], list[int]]],
    cfg: dict,
    lr: float,
    seed: int,
    pad_id: int,
    state_path: Path | None = None,
    progress: state.Progress | None = None,
    prober: probes.Prober | None = None,
    snapshotter: snapshots.Snapshotter | None = None,
    loss_fn=completion_loss,
    desc: str = "finetune",
    stop: signals.StopRequested | None = None,
    fingerprint: dict | None = None,
    lm: bool = True,
) -> LoopResult:
    """Train ``model`` in place on encoded examples.

    ``progress`` holds what the run recorded before the loop (the method's statistics); a run
    that resumes from ``state_path`` takes the saved one instead, if the state was saved with
    ``fingerprint`` (:func:`ptft.finetune.state.fingerprint`). The state is saved there every
    ``save_every`` steps, and when a stop signal arrives, after which
    :class:`ptft.signals.Interrupted` is raised. ``stop`` is the command's handler,
    installed at process start; without one the loop installs its own and restores the previous
    handlers when it ends. ``loss_fn(model, batch, fast, kept)`` is the method's summed loss of a
    micro-batch; ``lm=False`` (a classifier head's loss) runs it on plain padded batches, without
    the language model's shortcuts. ``snapshotter`` saves the model at its steps (0 is before the first update);
    ``progress.snapshots`` records them, so a resumed run keeps those taken before the state was
    saved and takes the others.

    Examples without a target token (see :func:`ptft.finetune.batching.has_target`) are left
    out, with a warning, so no step divides by zero targets. A step whose loss or gradient norm
    is NaN or infinite raises :class:`Diverged` before the optimizer applies it; the state is not
    saved then (a re-run would replay the same step and diverge again).
    """
    examples, untargeted = with_targets(examples)
    if untargeted:
        log.warning("%d of %d training examples have no target token within max_length=%s; they are left out",
                    untargeted, untargeted + len(examples), cfg.get("max_length"))  # fmt: skip
    if not examples:
        raise ValueError(f"{desc}: no training example has a target token within max_length={cfg.get('max_length')}")
    # -- Setup: optimizer, schedule, and the loss shortcuts this model allows.
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["precision"] == "bf16")
    progress = state.Progress() if progress is None else progress
    trainable = [p for p in model.parameters() if p.requires_grad]
    # A loop that ran on this model before (one stopped by a signal, resumed in the same process) left
    # KeptGrads' buffers in .grad, stale: a new KeptGrads would add its gradients to the last step's.
    for p in trainable:
        p.grad = None
    opt = optim.make_optimizer(trainable, cfg, lr, device)
    w = sharded.world()
    # CUDA's caching allocator already reuses gradient memory; on CPU, see grad_buffers.
    kept = KeptGrads(model) if device.type == "cpu" and lm and not w.sharded else None
    micro, accum = cfg["batch_size"], cfg["grad_accum"]
    total_steps = count_steps(len(examples), cfg)
    warmup = optim.warmup_steps(total_steps, cfg)
    lengths = [example_length(e) for e in examples]
    if snapshotter is not None:  # a snapshot step beyond the run fails here, before anything trains
        snapshotter.schedule(total_steps, math.ceil(len(examples) / micro), accum)
    with contextlib.ExitStack() as cleanup:
        if not lm:  # a classifier pools one row per example: no packing, and its head is no LM head
            batching, fast = "grouped" if cfg["batching"] == "packed" else cfg["batching"], False
        else:
            if cfg["batching"] == "packed":  # a model on SDPA attends example by example within a packed row
                cleanup.enter_context(use_packed_attention(unwrap(model)))
            batching, fast = check_shortcuts(model, examples, cfg["batching"], pad_id, device, kept)
            batching, fast = sharded.same_on_all((batching, fast and not w.sharded), w)  # loss.target_logits

        # -- Resume: weights, optimizer, RNG streams and progress as saved, the data stream at the saved step.
        step = 0
        resumed = state.load(state_path, model, opt, fingerprint) if state_path is not None else None
        if resumed is not None:
            step, progress = resumed
            log.info("resuming at step %d of %d from %s", step, total_steps, state_path.parent)
        if snapshotter is not None and w.main:
            snapshotter.resume(progress.snapshots)

        # The batch order is a pure function of (seed, epoch), so resuming at optimizer step
        # ``step`` replays exactly the micro-batches an uninterrupted run would see next.
        def micro_batches():
            epoch = 0
            while True:
                yield from make_batches(lengths, micro, random.Random(f"{seed}:{epoch}"), batching == "grouped")
                epoch += 1

        stream = micro_batches()
        for _ in range(step * accum):
            next(stream)

        stepper = None  # the compiled AdamW step, which also clips (and zeroes the gradients graphs keep)
        copies = None  # bf16 copies of the matmul weights, which the compiled step keeps (bf16_weights)
        if compiled.wanted(cfg, device):
            why = compiled.eligible(model, cfg, w.sharded)
            if why is None:
                cleanup.enter_context(compiled.compiled_blocks(model, desc))
                if compiled.AdamWStep.usable(opt):
                    # KeptGrads (CPU) computes the LM head's gradient itself, into the fp32 weight's .grad
                    own = kept.weights() if kept is not None and kept.active else ()
                    copies = bf16_weights.Bf16Weights(model, exclude=own) if bf16_weights.eligible(cfg) else None
                    stepper = compiled.AdamWStep(opt, copies or None)
            elif cfg.get("compile") is True:
                raise ValueError(f"{desc}: finetune.compile is true, but {why}; set it to auto or false")
        # The tensors whose .grad the backward writes: a weight's bf16 copy, or the weight.
        holders = stepper.holders(trainable) if stepper is not None else trainable
        swapped = copies.swapped if copies else contextlib.nullcontext

        graphed = None
        if lm and cfg.get("cuda_graphs", False) is not False:
            why = graphs.eligible(model, cfg, batching, fast, graphs.plain_completion(loss_fn), device, w.sharded)
            if why is None:
                graphed = graphs.Graphs(model, holders, pad_id, desc, own_grads=graphs.OWN_GRADS and accum == 1)
                cleanup.callback(graphed.release)
            elif cfg.get("cuda_graphs") is True:
                raise ValueError(f"{desc}: finetune.cuda_graphs is true, but {why}; set it to auto or false")

        def probe(at_step: int) -> None:
            # Probe time is kept out of the wall time, so tokens/s is the training's own.
            if prober is not None and prober.due(at_step, total_steps):
                t = time.time()
                progress.probes += prober.rows(model, at_step)
                progress.probe_time_s += time.time() - t

        def snapshot(at_step: int) -> None:
            # Before the state of at_step is saved: a run resumed from it has the snapshot already.
            if snapshotter is not None and snapshotter.due(at_step):
                t = time.time()
                progress.snapshots.append(snapshotter.take(model, at_step, batching, fast))
                progress.snapshot_time_s += time.time() - t

        # -- Loop: one optimizer step per iteration, then log, probe, snapshot and checkpoint.
        if step == 0:
            probe(0)
            snapshot(0)
        if stop is None:
            stop = signals.StopRequested()
            cleanup.callback(stop.restore)
        # Until here a stop had nothing to save; from here it lets the step in progress finish and saves it.
        stop.defer()
        model.train()
        start = time.time() - progress.wall_time_s - progress.probe_time_s - progress.snapshot_time_s
        bar = cleanup.enter_context(tqdm(total=total_steps, initial=step, desc=desc, mininterval=5, disable=not w.main))

        def prepare() -> tuple[list[dict], list[bool]]:
            """The next optimizer step's micro-batches and which of them count (:func:`ptft.finetune.sharded.share`),
            collated on the CPU: the step's counts need no wait for the device, and graphs take host inputs."""
            parts = [sharded.share(next(stream), w) for _ in range(accum)]  # this process's part of each
            return [collate([examples[i] for i in part], batching, pad_id) for part, _ in parts], [r for _, r in parts]

        upcoming = None
        while step < total_steps:
            for group in opt.param_groups:
                group["lr"] = lr * optim.lr_multiplier(step, total_steps, warmup, cfg)
            batches, real = upcoming if upcoming is not None else prepare()
            targets = sum(step_weight(b) for b, r in zip(batches, real, strict=True) if r)
            (n_target,) = sharded.all_sum([targets], device)
            if n_target == 0:  # unreachable after with_targets; a guard against a NaN loss of 0 / 0
                raise RuntimeError(f"{desc}: optimizer step {step + 1} has no target token")
            t0 = time.time()
            losses = []
            for b, r in zip(batches, real, strict=True):
                with swapped():
                    loss = graphed.run(b, n_target) if graphed is not None else None
                    if loss is None:
                        with autocast:
                            loss = loss_fn(model, to_device(b, device), fast, kept) / n_target
                        if not r:  # collectives need every process's forward and backward; its gradient must not count
                            loss = loss * 0
                        loss.backward()
                losses.append(loss.detach().float())
            if kept is not None:
                kept.settle()
            # Graphs that add into the gradients' memory need it zeroed, not freed (graphs.py). Otherwise the
            # backward adopts fresh gradients, which is one pass less than adding into zeros.
            keep = graphed is not None and graphed.keeps_grads
            read = torch.stack(losses)
            if stepper is not None:
                # Queued before the host waits for the device: the step clips on the device, and updates
                # nothing where the loss or the norm is not finite (Diverged is raised below).
                norm = gradient_norm(holders)
                stepper.step(norm, cfg["max_grad_norm"], keep, torch.isfinite(read).all() & torch.isfinite(norm))
                read = torch.cat([read, norm[None]])
            upcoming = prepare() if step + 1 < total_steps else None  # while the device works on this step
            values = read.tolist()  # the step's one wait for the device
            loss_sum = sum(values[:accum], 0.0)
            n_tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                           for b, r in zip(batches, real, strict=True) if r)  # fmt: skip
            loss_sum, n_tokens = sharded.all_sum([loss_sum, n_tokens], device)
            grad_norm = values[-1] if stepper is not None else clip_gradients(trainable, cfg["max_grad_norm"])
            if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
                message = (f"{desc}, lr {lr:g}, seed {seed}: the loss is {loss_sum} and the gradient norm "
                           f"{grad_norm} at optimizer step {step + 1} of {total_steps}; training diverged and stopped "
                           f"before this step's update. Lower the lr or max_grad_norm, or check the checkpoint and "
                           f"the data.")  # fmt: skip
                result = LoopResult(progress, total_steps, batching, fast, untargeted)
                raise Diverged(message, step + 1, loss_sum, grad_norm, result)
            if stepper is None:
                opt.step()
            if keep:
                if stepper is None:  # (the compiled step zeroed them)
                    opt.zero_grad(set_to_none=False)
            elif kept is not None:
                kept.zero_grad(holders)
            else:
                for h in holders:
                    h.grad = None
            step += 1

            progress.log.append({"step": step, "loss": loss_sum, "lr": opt.param_groups[0]["lr"],
                                 "grad_norm": grad_norm, "tokens": int(n_tokens),
                                 "tokens_per_s": n_tokens / max(time.time() - t0, 1e-9)})  # fmt: skip
            probe(step)
            snapshot(step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}", refresh=False)
            progress.wall_time_s = time.time() - start - progress.probe_time_s - progress.snapshot_time_s
            # Every process stops at the same step, and all of them save: a signal may reach one first.
            stopping = sharded.any_of(bool(stop), device)
            if state_path is not None and (stopping or (step % cfg["save_every"] == 0 and step < total_steps)):
                state.save(state_path, model, opt, step, progress, fingerprint)
            if stopping:
                raise signals.Interrupted(stop.signum or signal.SIGTERM)
    return LoopResult(progress, total_steps, batching, fast, untargeted)


def finetune(
    checkpoint: str | Path,
    train_path: str | Path,
    task_name: str,
    cfg: dict,
    lr: float,
    seed: int,
    out_dir: str | Path,
    state_dir: str | Path,
    method: str = "full",
    validation_path: str | Path | None = None,
    stop: signals.StopRequested | None = None,
) -> dict:
    """Fine-tune and write ``model/``, ``train_log.parquet``, ``probes.parquet`` and ``summary.json``; the summary.

    ``cfg`` is the run's finetune config (:meth:`ptft.plan.Plan.run_config`). A stop signal
    saves the training state in ``state_dir`` and raises :class:`ptft.signals.Interrupted`;
    ``stop`` is the command's handler (see :func:`train_loop`). A ``max_length`` beyond the
    model's context window is cut to it (a warning; ``summary.json`` records the value used).

    With ``cfg["snapshots"]`` (:mod:`ptft.finetune.snapshots`) the snapshots are taken in
    ``state_dir/snapshots`` and moved to ``out_dir/snapshots`` at the end; with ``select:
    best_validation``, ``model/`` is the best of them (a diverged run selects none: its ``model/`` is
    its last finite step, as without snapshots). Every model folder holds ``ptft_run.json``
    (:func:`ptft.finetune.snapshots.run_info`), the optimizer step of its weights among them.
    """
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    impl = get_method(method)
    dataset = get_dataset(task_name)
    task = dataset.task
    impl.check_task(task_name, task.kind)
    scoring = cfg.get("validation_score")
    if scoring is not None and not isinstance(scoring, dict):
        raise ValueError(f"validation_score: expected the evaluation settings (batch_size, max_new_tokens, stop, "
                         f"rouge_stemmer), got {scoring!r}")  # fmt: skip
    snapshot_spec = cfg.get("snapshots")
    if snapshot_spec:
        snapshots.check_spec(snapshot_spec, validation_path is not None, bool(scoring))
    # Of the settings as given: the cap on max_length below is a function of them and the checkpoint.
    fingerprint = state.fingerprint({"config": cfg, "lr": lr, "seed": seed, "method": method, "task": task_name},
                                    [train_path, validation_path], checkpoint)  # fmt: skip
    set_seed(seed)
    w = sharded.world()
    if w.sharded and scoring:
        raise ValueError(f"finetune {task_name} ({method}): finetune.gpus > 1 cannot score the validation split "
                         "(validation_score generates, and a sharded model's processes would have to stop together); "
                         "select by the validation loss, or use one GPU for this task")  # fmt: skip
    device = sharded.start(w) if w.sharded else "cuda" if torch.cuda.is_available() else "cpu"
    # fp32 master weights; bf16 runs autocast the forward pass (mixed precision, as the paper's bf16).
    lm = task.kind != "sequence_classification"
    if lm:
        model, tokenizer = load_pretrained(checkpoint, dtype=torch.float32, device=device)
    else:
        head, dropout = cfg.get("classifier_head", "linear"), cfg.get("classifier_dropout", 0.1)
        model, tokenizer = heads.load_classifier(checkpoint, len(task.labels), head=head, dropout=dropout,
                                                 dtype=torch.float32, device=device,
                                                 id2label=dict(enumerate(task.labels)))  # fmt: skip
    loss_fn = impl.loss if lm else classifier_loss
    window = context_window(model.config)
    if window is not None and cfg["max_length"] > window:
        log.warning("finetune.max_length=%d exceeds the context window of %s (%d positions); using max_length=%d",
                    cfg["max_length"], checkpoint, window, window)  # fmt: skip
        cfg = {**cfg, "max_length": window}
    records = pd.read_parquet(train_path).to_dict("records")
    fmt = cfg["format"]
    examples = impl.encode(tokenizer, dataset, records, cfg)
    val_records, val_examples = [], []
    if validation_path is not None:
        # Encoded before training, so a validation split with no target token fails before the run, not after.
        val_records = pd.read_parquet(validation_path).to_dict("records")
        encoded = impl.encode(tokenizer, dataset, val_records, cfg)
        val_examples, untargeted = with_targets(encoded)
        if not val_examples:
            raise ValueError(f"finetune {task_name} ({method}): no validation example has a target token within "
                             f"max_length={cfg['max_length']}; its validation loss would be meaningless")  # fmt: skip
        if untargeted:
            log.warning("%d of %d validation examples have no target token within max_length=%s; the validation "
                        "loss leaves them out", untargeted, len(encoded), cfg["max_length"])  # fmt: skip
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    state_path = state_dir / "state.pt"
    # Checked before the method prepares the model: LP-FT fits its head only when it will not be resumed.
    resuming = state.usable(state_path, fingerprint)
    inputs = RunInputs(tokenizer, task, records, cfg, device, resuming, examples, val_examples, state_dir)
    model, method_stats = impl.prepare(model, inputs)
    if not lm:  # the LP-FT study's head norm at the start of training (after linear probing, or random)
        method_stats = {**method_stats, "head_norm_start": float(heads.head_layer(model).weight.detach().norm())}
    gathered = None
    if w.sharded and impl.trains:
        gathered = sharded.Gathered(model)
        model = sharded.shard(model, cfg["precision"])

    def write(path: Path, model, info: dict) -> None:
        """The model folder at ``path`` as the method saves it; a sharded run's is gathered to process 0."""

        def fill(model):
            snapshots.write_model(path, lambda folder: impl.save(folder, model, tokenizer, cfg, checkpoint), info)

        if gathered is not None:
            gathered.write(model, fill)
        elif w.main:
            fill(model)

    prober = None
    if cfg.get("probes"):
        p = cfg["probes"]
        probe_set = (
            probes.read_probe_set(p["path"])
            if p.get("path")
            else probes.builtin_probe_set(task, records, fmt, p["examples"], seed)
        )
        shared = lm and not w.sharded and not compiled.wanted(cfg, torch.device(device))
        prober = probes.Prober(tokenizer, probe_set, p["every"], window, eos=p.get("eos", False),
                               argmax_of=p.get("argmax_of"), shared_prompts=shared)  # fmt: skip

    def validate(model, batching: str, fast: bool, score: bool = True) -> dict:
        """The validation loss, and score with ``score`` and ``validation_score``, of ``model`` as it is now."""
        values = {"loss": validation_loss(model, val_examples, batching, tokenizer.pad_token_id, cfg["batch_size"],
                                          fast, device, loss_fn)}  # fmt: skip
        if score and scoring:
            values["score"] = validation_score(model, tokenizer, task, val_records, fmt, seed, scoring)
        return values

    snapshot_dir = state_dir / "snapshots"
    snapshotter = None
    if snapshot_spec:
        # Scoring generates, which is slow: a snapshot is scored only where it may become model/, whose
        # validation the summary reports; otherwise its loss alone (validation_score may be for the lr selection).
        selecting = snapshot_spec["select"] == "best_validation"
        snapshotter = snapshots.Snapshotter(snapshot_dir, snapshot_spec, write,
                                            None if validation_path is None else
                                            lambda *args: validate(*args, score=selecting))  # fmt: skip
    elif w.main:  # left by an earlier configuration of this run, whose state was discarded with it
        shutil.rmtree(snapshot_dir, ignore_errors=True)

    diverged = None
    try:
        if not impl.trains:  # the method's preparation is the result (lp): no step, no state to resume
            trained = LoopResult(state.Progress(method_stats=method_stats), 0, "grouped", False)
        else:
            trained = train_loop(model, examples, cfg, lr, seed, tokenizer.pad_token_id, state_path,
                                 state.Progress(method_stats=method_stats), prober, snapshotter, loss_fn,
                                 desc=f"finetune {task_name} ({method})", stop=stop, fingerprint=fingerprint,
                                 lm=lm)  # fmt: skip
    except Diverged as err:
        # A run of an lr grid (it has a validation split) is recorded as diverged, so that the
        # selection skips it and the grid's other lrs still count; a run on its own fails.
        if validation_path is None or err.result is None:
            raise
        log.error("%s The run is recorded as diverged; the lr selection skips it.", err)
        trained = err.result
        diverged = {"step": err.step, "loss": err.loss, "grad_norm": err.grad_norm}
    progress, batching, fast = trained.progress, trained.batching, trained.head_on_targets_only

    # The weights model/ gets: the last step's (a diverged run's last finite one), or the best snapshot's.
    select = snapshot_spec["select"] if snapshot_spec else "last"
    ft_step, selected_step = diverged["step"] - 1 if diverged else trained.steps, None
    if select == "best_validation" and diverged is None:
        selected_step = ft_step = snapshots.best(progress.snapshots, snapshot_spec["metric"])["step"]
        log.info("snapshot of step %d has the best validation %s", ft_step, snapshot_spec["metric"])
    taken = {r["step"]: r for r in progress.snapshots}

    valid = {}
    if diverged is not None:
        valid = {"loss": float("nan"), **({"score": float("nan")} if scoring else {})}
    elif selected_step is not None:
        valid = taken[selected_step]["validation"]
    elif validation_path is not None:
        valid = validate(model, batching, fast)
    if valid:
        log.info("validation: %s", valid)

    wall, tokens = progress.wall_time_s, sum(r["tokens"] for r in progress.log)
    n_params, flops = sum(p.numel() for p in model.parameters()), peak_flops(device, cfg)
    flops = flops * w.size if flops else flops  # the run's processes together, one device each
    record = RunRecord(
        checkpoint=str(checkpoint),
        task=task_name,
        method=method,
        lr=lr,
        seed=seed,
        model_dir=str(out_dir / "model"),
        examples=len(examples),
        examples_without_targets=trained.examples_without_targets,
        steps=trained.steps,
        batching=batching,
        head_on_targets_only=fast,
        total_tokens=tokens,
        wall_time_s=wall,
        tokens_per_s=tokens / max(wall, 1e-9),
        probe_time_s=progress.probe_time_s,
        snapshot_time_s=progress.snapshot_time_s,
        n_parameters=n_params,
        n_trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        peak_flops=flops,
        # 6·N·D: forward and backward FLOPs of a dense transformer per token, over the peak.
        mfu=6 * n_params * tokens / wall / flops if flops else None,
        peak_memory_bytes=peak_memory_bytes(device),  # process 0's: the processes hold equal shards
        processes=w.size,
        final_loss=diverged["loss"] if diverged else progress.log[-1]["loss"] if progress.log else None,
        validation=valid,
        diverged=diverged,
        ft_step=ft_step,
        snapshots=progress.snapshots,
        selected_step=selected_step,
        method_stats=progress.method_stats,
        config=cfg,
        provenance=provenance.current(provenance.for_model(checkpoint)),
    )
    info = snapshots.run_info(ft_step, trained.steps, select)
    if ft_step in taken:  # a snapshot holds these weights already
        if w.main:
            held = snapshot_dir / f"step{ft_step}"
            snapshots.write_model(out_dir / "model", lambda folder: snapshots.copy_folder(held, folder), info)
    else:
        write(out_dir / "model", model, info)
    if not w.main:  # process 0 writes the rest
        sharded.finish()
        return record.summary()
    origin = {"checkpoints": record.provenance["checkpoints"]}
    io.write_parquet(out_dir / "train_log.parquet", pd.DataFrame(progress.log), origin)
    probe_rows = pd.DataFrame(progress.probes, columns=list(probes.PROBE_COLUMNS))
    io.write_parquet(out_dir / "probes.parquet", probe_rows, origin)
    summary = record.summary()
    io.write_json(out_dir / "summary.json", summary)
    state.remove(state_path)
    if snapshot_spec and snapshot_spec.get("trajectory", True):
        # After the state is gone: a re-run that resumes from the state needs the snapshots it records.
        snapshots.publish(snapshot_dir, out_dir / "snapshots")
    elif snapshot_spec:  # they only chose model/ (the best epoch), which holds its copy
        shutil.rmtree(snapshot_dir, ignore_errors=True)
    log.info("fine-tuned %s on %s (%s): %d steps, final loss %s, %.0f tokens/s",
             checkpoint, task_name, method, trained.steps, record.final_loss, record.tokens_per_s)  # fmt: skip
    if w.sharded:
        sharded.finish()
    return summary

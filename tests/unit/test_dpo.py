"""DPO (ptft.finetune.methods.dpo) against its anchor, TRL's ``DPOTrainer``: the same token sequences,
loss, implicit rewards and gradients on a tiny model; and the two ways of computing the reference."""

from __future__ import annotations

import copy
import math
from itertools import chain, islice

import pytest
import torch

from ptft.finetune.batching import IGNORE, Pair, collate
from ptft.finetune.methods import get_method
from ptft.finetune.methods.base import RunInputs
from ptft.finetune.methods.dpo import dpo_terms, reference_logps

ROWS = {
    "prompt": [
        "human : where is the cup ?\nassistant :",
        "human : is the lamp hot ?\nassistant :",
        "human : who took the hat ?\nassistant :",
    ],
    "chosen": [" the cup is in the kitchen .", " the lamp is warm .", " anna took the hat in the garden ."],
    "rejected": [" i do not know .", " the lamp is cold and the hat is big .", " the hat is red ."],
}
BETA = 0.1


@pytest.fixture(scope="module")
def tiny():
    from ptft.checkpoints.tokenizer import train_tokenizer
    from ptft.checkpoints.toy_pretrain import build_model
    from ptft.toy.corpus import documents, tokenizer_extra_texts

    torch.manual_seed(0)
    docs = documents({"story": 1, "nli": 1, "summary": 1}, 0, {})
    tok = train_tokenizer(chain(islice(docs, 300), tokenizer_extra_texts()), 1024)
    shape = {"hidden_size": 32, "intermediate_size": 64, "layers": 2, "heads": 2, "max_position_embeddings": 256}
    cfg = {"model": shape}
    # float64 on our side; TRL's fused LM head computes its log-probs in float32, which bounds the tolerances below.
    reference = build_model(cfg, tok).double()
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # a policy away from its reference, so that rewards and gradients are not ~0
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return tok, policy, reference


def trl_batch_and_results(tok, policy, reference, tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, per_device_train_batch_size=3, report_to=[],
                         use_cpu=True, max_length=None)  # fmt: skip
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, processing_class=tok,
                             train_dataset=datasets.Dataset.from_dict(ROWS))  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    policy.train()
    policy.zero_grad()
    loss = trainer.compute_loss(policy, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return batch, float(loss), grads, metrics


def pairs_of(batch) -> list[Pair]:
    """TRL's batch (chosen rows, then rejected rows) as ptft's pairs: the same tokens, the same targets."""
    rows = []
    columns = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    for ids, mask, completion in zip(*columns, strict=True):
        ids = ids[mask.bool()].tolist()
        targets = completion[mask.bool()].tolist()
        rows.append((ids, [t if c else IGNORE for t, c in zip(ids, targets, strict=True)]))
    n = len(rows) // 2
    return [Pair(rows[i], rows[n + i]) for i in range(n)]


@pytest.mark.parametrize("fast", [True, False])
def test_dpo_loss_rewards_and_gradients_equal_trl(tiny, tmp_path, fast):
    tok, policy, reference = tiny
    batch, trl_loss, trl_grads, metrics = trl_batch_and_results(tok, policy, reference, tmp_path)
    pairs = pairs_of(batch)
    dpo = get_method("dpo")
    cfg = {"dpo": dpo.parse_config({"beta": BETA}, "finetune.dpo"), "precision": "fp32"}
    ref = reference_logps(reference, pairs, 2, "cpu")
    for pair, (c, r) in zip(pairs, ref.tolist(), strict=True):
        pair.reference = (c, r)
    dpo.prepare(policy, RunInputs(tok, None, [], cfg, "cpu", True))  # registers β; no pairs to cache
    ours = collate(pairs, "grouped", tok.pad_token_id)
    policy.zero_grad()
    loss = dpo.loss(policy, ours, fast) / ours["n_pairs"]  # the loop's normalisation: per pair
    loss.backward()
    assert float(loss) == pytest.approx(trl_loss, rel=1e-4)
    for name, p in policy.named_parameters():
        scale = float(trl_grads[name].abs().max())
        torch.testing.assert_close(p.grad, trl_grads[name], rtol=1e-3, atol=1e-3 * scale, msg=name)
    from ptft.finetune.loss import sequence_logps

    with torch.no_grad():
        logps = sequence_logps(policy, ours, fast)
    _, chosen_rewards, rejected_rewards = dpo_terms(logps[:3], logps[3:], ref[:, 0], ref[:, 1], BETA)
    # The check has teeth where the policy is away from its reference: each sequence's reward, not the
    # loss, whose distance from log 2 is the mean reward margin and so can be near 0 by chance (0.0015
    # in one run whose tiny model came out otherwise). Here |reward| is 0.04-0.23, mean 0.14.
    assert float(torch.cat([chosen_rewards, rejected_rewards]).abs().mean()) > 0.03
    assert float(chosen_rewards.mean()) == pytest.approx(metrics["rewards/chosen"], rel=1e-3)
    assert float(rejected_rewards.mean()) == pytest.approx(metrics["rewards/rejected"], rel=1e-3)
    assert float(logps[:3].mean()) == pytest.approx(metrics["logps/chosen"], rel=1e-5)


def test_ptft_encodes_a_pair_into_trls_tokens(tiny, tmp_path):
    """Prompt tokens, then the response's with EOS appended, the prompt masked: as TRL tokenizes the same rows."""
    from ptft.data.registry import get_dataset

    tok, policy, reference = tiny
    batch, *_ = trl_batch_and_results(tok, policy, reference, tmp_path)
    records = [dict(zip(ROWS, values, strict=True)) for values in zip(*ROWS.values(), strict=True)]
    cfg = {"format": "default", "max_length": 512, "max_prompt_length": 256}
    ours = get_method("dpo").encode(tok, get_dataset("toy_pref"), records, cfg)
    theirs = pairs_of(batch)
    assert sorted((p.chosen, p.rejected) for p in ours) == sorted((p.chosen, p.rejected) for p in theirs)  # shuffled


def test_cached_and_frozen_references_train_alike(tiny):
    """The two reference modes give the same losses along a short run (one computes once, one every step)."""
    from ptft.finetune.train import train_loop

    tok, _, reference = tiny
    records = [dict(zip(ROWS, values, strict=True)) for values in zip(*ROWS.values(), strict=True)] * 4
    from ptft.data.registry import get_dataset

    base = {"format": "default", "max_length": 512, "max_prompt_length": 256, "batch_size": 2, "grad_accum": 1,
            "epochs": 2, "max_steps": None, "warmup_ratio": 0.1, "weight_decay": 0.0, "precision": "fp32",
            "batching": "grouped", "max_grad_norm": 10.0, "save_every": 1000, "optimizer": "rmsprop",
            "schedule": "constant"}  # fmt: skip
    dpo = get_method("dpo")
    losses = {}
    for mode in ("cached", "frozen"):
        model = copy.deepcopy(reference)
        cfg = {**base, "dpo": dpo.parse_config({"reference": mode}, "finetune.dpo")}
        pairs = dpo.encode(tok, get_dataset("toy_pref"), records, cfg)
        model, _ = dpo.prepare(model, RunInputs(tok, None, records, cfg, "cpu", False, pairs, []))
        result = train_loop(model, pairs, cfg, 1e-3, 0, tok.pad_token_id, loss_fn=dpo.loss)
        losses[mode] = [r["loss"] for r in result.progress.log]
    assert losses["cached"][0] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at the first step
    assert losses["cached"] == pytest.approx(losses["frozen"], rel=1e-4, abs=1e-5)
    assert losses["cached"][-1] < losses["cached"][0] - 0.01  # it trains

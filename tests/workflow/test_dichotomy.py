"""The toy study shows the paper's dichotomy, beyond its sampling error.

Runs the default study's own pre-training (same corpus, seed and schedule; only its first and
final checkpoints are saved), then scores the base checkpoints few-shot and fine-tunes the
final one on the tasks that never occur in pre-training. Asserts, with seeded 95 % paired
bootstrap intervals over the scored items:

- on the pre-training-learnable tasks (NLI, summary) the base score rises from the first to
  the final checkpoint (the interval of the rise lies above zero);
- on the others (paraphrase, question generation) the base rise is smaller than the
  learnable task's of the same kind (the interval of the difference lies below zero), the
  base paraphrase accuracy is no better than always answering the most frequent label, and
  fine-tuning lifts both far above their base score (the interval lies above zero).

It also runs the study's Dissecting stage on the final checkpoint (toy documents rewritten into
controlled variants, fine-tuning on other documents, the likelihood change split into topic,
style and facts) and asserts Zhang & Wu's finding there.
"""

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_snakemake
from ptft.aggregate.bootstrap import percentile_ci

pytestmark = pytest.mark.slow
RESAMPLES, CONFIDENCE = 3000, 0.95


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dichotomy")
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["study"] = "dichotomy"
    cfg["checkpoints"]["toy"]["n_checkpoints"] = 2  # same run, fewer saved checkpoints
    final_name = f"step{cfg['checkpoints']['toy']['steps']}"
    cfg["finetune"]["checkpoints"] = [final_name]  # only the final one is fine-tuned here
    cfg["train_tasks"] = ["toy_paraphrase", "toy_qgen", "toy_docs"]
    cfg["finetune"]["per_task"] = {"toy_docs": cfg["finetune"]["per_task"]["toy_docs"]}
    cfg["data"]["per_task"] = {}
    cfg["eval_sets"] = ["toy_nli", "toy_paraphrase", "toy_summary", "toy_qgen"]
    cfg["evaluate"]["formats"] = ["default"]
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    first, final = (f"step{cfg['checkpoints']['toy']['first_step']}", f"step{cfg['checkpoints']['toy']['steps']}")
    lr = cfg["finetune"]["lrs"][0]
    eval_dir = workdir / "results/dichotomy/eval"
    # Only the predictions these tests read: the tables and figures are the micro test's.
    targets = [eval_dir / f"base/{c}/predictions.parquet" for c in (first, final)]
    targets += [eval_dir / f"ft/{final}/{t}/full/lr{lr:g}/seed0/predictions.parquet" for t in cfg["train_tasks"][:2]]
    # The Dissecting stage on the final checkpoint: toy documents derived, fine-tuned on, measured.
    results = workdir / "results/dichotomy"
    targets += [results / "figures/dissecting.png", results / "report/dissect_components.html"]
    out = run_snakemake(workdir, workdir / "config.yaml", *[str(t.relative_to(workdir)) for t in targets])
    assert out.returncode == 0, out.stderr[-5000:]
    base = {c: pd.read_parquet(eval_dir / f"base/{c}/predictions.parquet") for c in (first, final)}
    ft = {
        t: pd.read_parquet(eval_dir / f"ft/{final}/{t}/full/lr{lr:g}/seed0/predictions.parquet")
        for t in cfg["train_tasks"][:2]
    }
    return base[first], base[final], ft, results


def scores(pred: pd.DataFrame, eval_set: str) -> pd.Series:
    return pred[pred["eval_set"] == eval_set].set_index("example_id")["score"].sort_index()


def paired(a: pd.Series, b: pd.Series, seed: int = 0):
    """Mean of a − b over the same items, with its percentile-bootstrap interval."""
    assert (a.index == b.index).all()
    d = (a - b).to_numpy()
    lo, hi = percentile_ci(d, RESAMPLES, CONFIDENCE, seed)
    return d.mean(), lo, hi


@pytest.mark.parametrize("eval_set", ["toy_nli", "toy_summary"])
def test_base_rises_on_pretraining_learnable_tasks(run, eval_set):
    first, final, *_ = run
    rise, lo, _ = paired(scores(final, eval_set), scores(first, eval_set))
    assert lo > 0, f"{eval_set}: rise {rise:.3f}, interval low {lo:.3f}"


@pytest.mark.parametrize("learnable, other", [("toy_nli", "toy_paraphrase"), ("toy_summary", "toy_qgen")])
def test_base_does_not_rise_on_the_others(run, learnable, other):
    first, final, *_ = run
    rise_learnable = scores(final, learnable) - scores(first, learnable)
    rise_other = scores(final, other) - scores(first, other)
    # Different items: compare the two rises by an unpaired bootstrap of their difference.
    rng = np.random.default_rng(0)
    a, b = rise_other.to_numpy(), rise_learnable.to_numpy()
    diffs = a[rng.integers(0, len(a), (RESAMPLES, len(a)))].mean(1) - b[
        rng.integers(0, len(b), (RESAMPLES, len(b)))
    ].mean(1)
    hi = np.percentile(diffs, 100 * (1 + CONFIDENCE) / 2)
    assert hi < 0, f"{other} rises {a.mean():.3f}, {learnable} {b.mean():.3f}"


def test_base_paraphrase_is_no_better_than_a_constant_guess(run):
    for pred in run[:2]:
        p = pred[pred["eval_set"] == "toy_paraphrase"]
        majority = p["gold"].value_counts(normalize=True).max()
        lo, hi = percentile_ci(p["score"].to_numpy(), RESAMPLES, CONFIDENCE, 0)
        assert p["score"].mean() - majority <= (hi - lo) / 2


@pytest.mark.parametrize("task", ["toy_paraphrase", "toy_qgen"])
def test_finetuning_lifts_the_tasks_absent_from_pretraining(run, task):
    _, final, ft, _ = run
    gain, lo, _ = paired(scores(ft[task], task), scores(final, task))
    assert lo > 0, f"{task}: gain {gain:.3f}, interval low {lo:.3f}"


def test_finetuning_on_documents_shifts_topic_and_style_not_facts(run):
    """Zhang & Wu's finding in the toy world: after fine-tuning on stories of the home domain,
    the original stories gain most, the gain splits into topic and style parts beyond their
    intervals, and the facts part (original vs counterfactual) is small."""
    results = run[3]
    change = pd.read_parquet(results / "tables/dissect_change.parquet").set_index("variant")
    comps = pd.read_parquet(results / "tables/dissect_components.parquet").set_index("component")
    assert (change["n"] == 150).all() and change["method"].eq("full").all()
    assert change.loc["original", "ci_low"] > 0
    assert change.loc["original", "change"] > change.loc["topic", "change"]  # the home nouns were learned
    for style in ("style:casual", "style:rap"):
        assert change.loc["original", "change"] > change.loc[style, "change"]  # so was the plain register
    assert comps.loc["topic", "ci_low"] > 0 and comps.loc["style", "ci_low"] > 0
    assert abs(comps.loc["facts", "value"]) < comps.loc["topic", "value"] / 5
    # The decomposition's means are differences of the change table's means (paired, same documents).
    c = change["change"]
    assert comps.loc["facts", "value"] == pytest.approx(c["original"] - c["counterfactual"], abs=1e-9)
    assert comps.loc["topic", "value"] == pytest.approx(c["counterfactual"] - c["topic"], abs=1e-9)
    assert comps.loc["style", "value"] == pytest.approx(
        c["original"] - (c["style:casual"] + c["style:rap"]) / 2, abs=1e-9
    )
    assert comps.loc[["facts", "topic", "style", "other"], "value"].sum() == pytest.approx(c["original"], abs=1e-9)
    # Table values recomputed from the per-text log-likelihoods.
    final = change["checkpoint"].iloc[0]
    base = pd.read_parquet(results / f"dissect/base/{final}/loglik.parquet")
    topic = base[base["variant"] == "topic"]
    assert change.loc["topic", "ll_base"] == pytest.approx((topic["logp"] / topic["n_tokens"]).mean(), rel=1e-9)
    assert (results / "figures/dissecting.svg").exists()

"""The Dissecting analysis (Zhang & Wu, docs/studies.md §2): what fine-tuning on a corpus changes.

For a model m and text x, ``ll_m(x)`` is the per-token log-likelihood: the summed log-
probability of x's tokens, each given the ones before it (the first given the EOS token, as
lm-evaluation-harness conditions an empty context), divided by the number of tokens. For a
document d and a variant v of it (``original`` is d itself), the change after fine-tuning is

    Δ_v(d) = ll_ft(v(d)) - ll_base(v(d)),

base being the checkpoint the fine-tuned model started from. Every variant changes one factor
of d and keeps the others (variants are grouped by their ``factor``: ``topic``, ``style``,
``facts``), so the change on the original splits, per document, into

    facts  = Δ_original - Δ_facts      what the counterfactual lacks: d's own facts;
    topic  = Δ_facts - Δ_topic         both keep style, only the counterfactual keeps the topic;
    style  = Δ_original - Δ_style      what a restyled d lacks: the style (Δ_style is the mean
                                       over the style variants);
    other  = Δ_original - (facts + topic + style), the rest (a generic shift in likelihood).

Tables hold the means over documents with every variant, with percentile-bootstrap intervals
over those documents. A component whose variants the study lacks is left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ptft.aggregate.bootstrap import percentile_ci
from ptft.evaluate.multiple_choice import encode_requests, encoded_loglikelihoods

ORIGINAL = "original"
COMPONENTS = ("facts", "topic", "style", "other")
MODEL_KEYS = ["checkpoint", "step", "train_task", "method", "lr", "seed", "train_size", "parent"]


def texts_frame(corpus: pd.DataFrame, variants: pd.DataFrame) -> pd.DataFrame:
    """(original_id, variant, factor, text) of every original document and every variant."""
    originals = pd.DataFrame({"original_id": corpus["doc_id"].astype(str), "variant": ORIGINAL,
                              "factor": ORIGINAL, "text": corpus["text"]})  # fmt: skip
    return pd.concat([originals, variants[["original_id", "variant", "factor", "text"]]], ignore_index=True)


def text_logliks(model, tokenizer, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(summed log-probability, number of tokens) of each text, conditioned on EOS."""
    encoded = encode_requests(tokenizer, [("", t) for t in texts])
    return encoded_loglikelihoods(model, tokenizer, encoded, batch_size), np.array([len(c) for _, c in encoded])


def per_document_change(base: pd.DataFrame, ft: pd.DataFrame) -> pd.DataFrame:
    """Δ per (original_id, variant): rows of loglik tables (original_id, variant, factor, logp, n_tokens).

    Only documents with every variant in both tables are kept, so all means are paired.
    """

    def ll(df):
        return df.assign(ll=df["logp"] / df["n_tokens"]).set_index(["original_id", "variant"])[["factor", "ll"]]

    b, f = ll(base), ll(ft)
    joined = b.join(f["ll"].rename("ll_ft"), how="inner").rename(columns={"ll": "ll_base"})
    n_variants = joined.index.get_level_values("variant").nunique()
    complete = joined.groupby(level="original_id").size() == n_variants
    joined = joined[joined.index.get_level_values("original_id").isin(complete[complete].index)]
    return joined.assign(change=joined["ll_ft"] - joined["ll_base"]).reset_index()


def components(change: pd.DataFrame) -> pd.DataFrame:
    """Per document, the facts/topic/style/other split of the original's change (module docstring)."""
    by_factor = change.groupby(["original_id", "factor"])["change"].mean().unstack("factor")
    out = pd.DataFrame(index=by_factor.index)
    orig = by_factor[ORIGINAL]
    if "facts" in by_factor:
        out["facts"] = orig - by_factor["facts"]
    if "facts" in by_factor and "topic" in by_factor:
        out["topic"] = by_factor["facts"] - by_factor["topic"]
    if "style" in by_factor:
        out["style"] = orig - by_factor["style"]
    if set(out.columns) == {"facts", "topic", "style"}:
        out["other"] = orig - out[["facts", "topic", "style"]].sum(axis=1)
    return out


def _interval(values: np.ndarray, boot: dict) -> tuple[float, float]:
    return percentile_ci(values, boot["resamples"], boot["confidence"], boot["seed"])


def dissect_tables(pairs: list[tuple[dict, pd.DataFrame, pd.DataFrame]], boot: dict):
    """(change per variant, decomposition): DataFrames with a row per fine-tuned model and variant / component.

    ``pairs``: (model metadata with MODEL_KEYS, base loglik table, fine-tuned loglik table). A
    fine-tuned table of a trajectory holds one model per ``ft_step``: each gives its own rows.
    """
    change_rows, comp_rows = [], []
    for meta, base, ft_all in pairs:
        base = base.drop(columns="ft_step", errors="ignore")
        steps = ft_all["ft_step"] if "ft_step" in ft_all else pd.Series(pd.NA, index=ft_all.index)
        for step, ft in ft_all.groupby(steps, dropna=False, sort=True):
            key = {**{k: meta.get(k) for k in MODEL_KEYS}, "ft_step": None if pd.isna(step) else int(step)}
            _model_rows(key, base, ft.drop(columns="ft_step", errors="ignore"), boot, change_rows, comp_rows)
    change_df = pd.DataFrame(change_rows)
    comp_df = pd.DataFrame(comp_rows)
    for df in (change_df, comp_df):
        if len(df):
            for column in ("step", "seed", "train_size", "ft_step"):
                df[column] = df[column].astype("Int64")
            df["parent"] = df["parent"].astype("string")
            df["lr"] = df["lr"].astype("float64")
    # A trajectory's last snapshot and the final model are the same weights: their rows are one.
    keys = [*MODEL_KEYS, "ft_step"]
    change_df = change_df.drop_duplicates([*keys, "variant"]) if len(change_df) else change_df
    comp_df = comp_df.drop_duplicates([*keys, "component"]) if len(comp_df) else comp_df
    return change_df, comp_df


def _model_rows(key: dict, base: pd.DataFrame, ft: pd.DataFrame, boot: dict, change_rows: list, comp_rows: list):
    """Append the change and component rows of one fine-tuned model against the model it started from."""
    change = per_document_change(base, ft)
    for (variant, factor), g in change.groupby(["variant", "factor"], sort=True):
        lo, hi = _interval(g["change"].to_numpy(), boot)
        change_rows.append({**key, "variant": variant, "factor": factor, "ll_base": g["ll_base"].mean(),
                            "ll_ft": g["ll_ft"].mean(), "change": g["change"].mean(), "ci_low": lo,
                            "ci_high": hi, "n": len(g)})  # fmt: skip
    comp = components(change)
    for name in [c for c in COMPONENTS if c in comp]:
        values = comp[name].to_numpy()
        lo, hi = _interval(values, boot)
        comp_rows.append({**key, "component": name, "value": values.mean(), "ci_low": lo, "ci_high": hi,
                          "n": len(values)})  # fmt: skip

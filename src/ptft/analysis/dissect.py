"""The Dissecting analysis (Zhang & Wu, ICLR 2024): change of each controlled variant's
likelihood after fine-tuning on a corpus, split into topic, style and facts. Its tables are
written by the derive stage (``derive_stats``) and by ``ptft dissect`` (:mod:`ptft.derive.dissect`);
this analysis draws their figure."""

from __future__ import annotations

from ptft.analysis.registry import Analysis, Table, register


def _plot(inputs, settings, spec, out) -> None:
    import pandas as pd

    from ptft.aggregate.figures import plot_dissecting

    plot_dissecting(pd.read_parquet(inputs["change"][0]), pd.read_parquet(inputs["components"][0]),
                    out / "dissecting.png")  # fmt: skip


register(
    Analysis(
        name="dissect",
        category="Dissecting: what fine-tuning changes",
        tables=(
            Table(
                "derive_stats",
                "The derivation stage's last run, per variant: requests (every document × attempt), cache hits, "
                "requests sent, failed after the backend's retries, replies accepted, documents dropped after "
                "``derive.checks.max_attempts`` unusable replies, rejections by reason (empty, refused, too short, "
                "copy of the input, repetitive), tokens sent and their estimated cost in US dollars.",
            ),
            Table(
                "dissect_change",
                "Change after fine-tuning on the corpus in per-token log-likelihood, per fine-tuned model and "
                "variant: the mean over documents of base (``ll_base``) and fine-tuned (``ll_ft``) values and of "
                "their paired difference (``change``), with its bootstrap interval over the ``n`` documents that "
                "have every variant. Defined in ``ptft.derive.dissect``.",
                applies=lambda plan: bool(plan.dissect_models),
            ),
            Table(
                "dissect_components",
                "The original documents' change split per document into facts (original − counterfactual), topic "
                "(counterfactual − topic variant), style (original − mean of the style variants) and other (the "
                "rest), averaged over documents with bootstrap intervals. Defined in ``ptft.derive.dissect``.",
                applies=lambda plan: bool(plan.dissect_models),
            ),
        ),
        figure_caption="The Dissecting analysis (Zhang & Wu, ICLR 2024). Left: the mean change after fine-tuning "
        "on the corpus in per-token log-likelihood, fine-tuned minus base, of the original documents and of each "
        "controlled variant, per pre-training checkpoint, with 95 % bootstrap intervals over the documents. "
        "Right: the original's change split per document into ``facts`` (original − counterfactual), ``topic`` "
        "(counterfactual − topic variant), ``style`` (original − mean of the style variants) and ``other`` (the "
        "rest). Definitions: ``ptft.derive.dissect`` and docs/derivation.md.",
        figures=lambda plan: ["dissecting"] if plan.dissect_models else [],
        plot=_plot,
        applies=lambda plan: plan.derive,
        inputs=lambda plan: {
            "change": [plan.table_path("dissect_change")],
            "components": [plan.table_path("dissect_components")],
        },  # fmt: skip
    )
)

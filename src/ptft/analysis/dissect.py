"""The Dissecting analysis (Zhang & Wu, ICLR 2024): change of each controlled variant's
likelihood after fine-tuning on a corpus, split into topic, style and facts. Its tables are
written by the derive stage (``derive_stats``) and by ``ptft dissect`` (:mod:`ptft.derive.dissect`);
this analysis draws their figures: ``dissecting`` (the final models per pre-training checkpoint),
and where the study has them, ``dissect_components_by_size`` (the components against the train
size, when the Dissecting runs have more than one) and ``dissect_components_by_step`` (against
the fine-tuning step, when they save snapshots)."""

from __future__ import annotations

from ptft.analysis.registry import Analysis, Table, register


def _runs(plan) -> list:
    """The runs on the Dissecting corpus (not the models they start from: base checkpoints, parent runs)."""
    return [m for m in plan.dissect_models if not m.is_base and m.train_task == plan.dissect_task]


def _figures(plan) -> list[str]:
    if not plan.dissect_models:
        return []
    # getattr: train sizes and snapshots are axes newer than some plans (their absence: one size, no snapshots).
    by_size = len({getattr(m, "train_size", None) for m in _runs(plan)}) > 1
    by_step = any(getattr(m, "snapshots", False) for m in _runs(plan))
    return ["dissecting", *(["dissect_components_by_size"] if by_size else []),
            *(["dissect_components_by_step"] if by_step else [])]  # fmt: skip


def _plot(inputs, settings, spec, out) -> None:
    import pandas as pd

    from ptft.aggregate.figures import plot_dissect_components, plot_dissecting

    change, components = pd.read_parquet(inputs["change"][0]), pd.read_parquet(inputs["components"][0])
    if "dissecting" in spec["figures"]:
        plot_dissecting(change, components, out / "dissecting.png")
    for x, name in (("train_size", "dissect_components_by_size"), ("ft_step", "dissect_components_by_step")):
        if name in spec["figures"]:
            plot_dissect_components(components, x, out / f"{name}.png")


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
                "have every variant. A model is its run (checkpoint, method, lr, seed, ``train_size``, ``parent``) "
                "and its fine-tuning step ``ft_step`` (snapshots along the run, where the study saves them). "
                "Defined in ``ptft.derive.dissect``.",
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
        figure_caption="The Dissecting analysis (Zhang & Wu, ICLR 2024). ``dissecting``, left: the mean change after "
        "fine-tuning on the corpus in per-token log-likelihood, fine-tuned minus base, of the original documents "
        "and of each controlled variant, per pre-training checkpoint; right: the original's change split per "
        "document into ``facts`` (original − counterfactual), ``topic`` (counterfactual − topic variant), "
        "``style`` (original − mean of the style variants) and ``other`` (the rest); final models only, at the "
        "largest train size. ``dissect_components_by_size``: the components of the final models against the "
        "train size (log scale); ``dissect_components_by_step``: against the fine-tuning step of the runs' "
        "snapshots; one panel per component, one line per pre-training checkpoint (darker to lighter: earlier to "
        "later). Lines average lrs and seeds; bands are ± one standard deviation over seeds where a line has "
        "several, else the 95 % bootstrap interval over the documents. Definitions: ``ptft.derive.dissect`` and "
        "docs/derivation.md.",
        figures=_figures,
        plot=_plot,
        applies=lambda plan: plan.derive,
        inputs=lambda plan: {
            "change": [plan.table_path("dissect_change")],
            "components": [plan.table_path("dissect_components")],
        },  # fmt: skip
    )
)

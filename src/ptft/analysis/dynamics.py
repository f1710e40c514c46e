"""Learning dynamics during fine-tuning (Ren & Sutherland 2025): the probes' log-probabilities
along training, one figure per (training task, method), a panel per checkpoint (and lr, seed)."""

from __future__ import annotations

from ptft.analysis.registry import Analysis, register


def _runs(plan) -> list[dict]:
    return [{"checkpoint": m.checkpoint, "task": m.train_task, "method": m.method, "lr": m.lr, "seed": m.seed,
             "path": plan.probes_path(m)} for m in plan.probe_runs]  # fmt: skip


def _figures(plan) -> list[str]:
    return list(dict.fromkeys(f"learning_dynamics_{m.train_task}_{m.method}" for m in plan.probe_runs))


def _plot(inputs, settings, spec, out) -> None:
    import pandas as pd

    from ptft import io
    from ptft.aggregate import figures

    steps = {e["name"]: e.get("step") for e in io.read_json(inputs["manifest"][0])["checkpoints"]}
    runs = pd.DataFrame(spec["runs"])
    several = runs.groupby(["task", "method"])[["lr", "seed"]].transform("nunique").max(axis=1) > 1
    for (task, method), group in runs.assign(several=several).groupby(["task", "method"], sort=True):
        group = group.assign(order=group["checkpoint"].map(steps))
        group = group.sort_values(["order", "lr", "seed"], kind="mergesort")
        parts = []
        for run in group.itertuples():
            panel = run.checkpoint + (f" · lr {run.lr:g} · seed {run.seed}" if run.several else "")
            parts.append(pd.read_parquet(run.path).assign(panel=panel))
        path = out / f"learning_dynamics_{task}_{method}.png"
        figures.plot_learning_dynamics(pd.concat(parts), f"Learning dynamics: {task} ({method})", path)


register(
    Analysis(
        name="dynamics",
        category="Learning dynamics",
        figure_caption="Learning dynamics during fine-tuning (Ren & Sutherland 2025): every ``probes.every`` "
        "optimizer steps, the summed log-probability of each probe response type given its prompt, averaged over "
        "the probe examples; one panel per pre-training checkpoint. Built-in response types: ``gold`` (the "
        "example's own completion), ``other_label`` (a wrong label, classification), ``shuffled_gold`` (its words "
        "shuffled, generation) and ``other_response`` (another example's completion). Gold rising while the wrong "
        "label falls is the model learning the task; all rising together is it learning the output format.",
        figures=_figures,
        plot=_plot,
        applies=lambda plan: bool(plan.probe_runs),
        inputs=lambda plan: {"probes": [r["path"] for r in _runs(plan)], "manifest": [plan.manifest_path]},
        spec=lambda plan: {"runs": _runs(plan)},
    )
)

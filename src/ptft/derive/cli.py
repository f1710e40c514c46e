"""``ptft`` sub-commands of the derivation stage and the Dissecting analysis."""

from __future__ import annotations

import logging
import sys

from ptft.cli_args import json_arg
from ptft.config import complete

log = logging.getLogger(__name__)


def cmd_derive_corpus(a) -> None:
    from ptft import io
    from ptft.derive.corpus import load_documents, sample_documents

    cfg = a.corpus
    docs = load_documents(cfg, a.local_dir or None)
    sample = sample_documents(docs, cfg["n"], cfg["min_chars"], cfg["seed"])
    log.info("corpus: %d documents sampled from %s (%d read, at least %d characters kept)",
             len(sample), cfg.get("path") or cfg.get("dataset"), len(docs), cfg["min_chars"])  # fmt: skip
    io.write_parquet(a.out, sample)


def cmd_derive(a) -> None:
    import pandas as pd

    from ptft import io
    from ptft.derive.cache import ReplyCache
    from ptft.derive.run import DerivationFailed, derive_variants, make_backend, stats_summary
    from ptft.derive.templates import load_variant

    cfg = a.config
    specs = cfg["variants"]
    if a.templates is not None:  # the workflow resolved where each template lies
        if len(a.templates) != len(specs):
            raise SystemExit(f"derive: {len(a.templates)} --templates for {len(specs)} variants")
        specs = [{**v, "template": t} for v, t in zip(specs, a.templates, strict=True)]
    variants = [load_variant(v, a.root) for v in specs]
    backend = make_backend(cfg["backend"])
    corpus = pd.read_parquet(a.corpus)
    checks = complete("derive.checks", cfg.get("checks"))
    max_attempts = checks.pop("max_attempts")
    with ReplyCache(a.cache) as cache:
        log.info("derive: %d documents x %d variants with %r; cache %s holds %d replies",
                 len(corpus), len(variants), backend, a.cache, len(cache))  # fmt: skip
        try:
            table, stats = derive_variants(corpus, variants, backend, cache, cfg.get("generation", {}), checks,
                                           max_attempts, cfg["backend"].get("price_per_million"))  # fmt: skip
        except DerivationFailed as e:
            log.error("%s", e)
            sys.exit(1)
    log.info("derive: %s", stats_summary(stats))
    log.info("derive statistics per variant:\n%s", stats.to_string(index=False))
    io.write_parquet(a.stats, stats)
    io.write_parquet(a.out, table)


def cmd_dissect_loglik(a) -> None:
    import pandas as pd
    import torch

    from ptft import io, provenance
    from ptft.checkpoints.load import load_pretrained
    from ptft.derive.dissect import text_logliks, texts_frame
    from ptft.evaluate.run import ft_step, snapshot_dirs

    torch.set_num_threads(max(1, a.threads))
    texts = texts_frame(pd.read_parquet(a.corpus), pd.read_parquet(a.variants))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # A trajectory: every snapshot of the run, each a model of its own ft_step.
    models = snapshot_dirs(a.model_dir) if a.trajectory else [(ft_step(a.model_dir), a.model_dir)]
    frames = []
    for step, folder in models:
        model, tokenizer = load_pretrained(folder, device=device)
        model.eval()
        logp, n_tokens = text_logliks(model, tokenizer, texts["text"].tolist(), a.batch_size)
        frames.append(texts.drop(columns="text").assign(logp=logp, n_tokens=n_tokens, ft_step=step))
    origin = {"checkpoints": provenance.union(provenance.checkpoints_of(folder) for _, folder in models)}
    io.write_parquet(a.out, pd.concat(frames, ignore_index=True), origin)


def cmd_dissect(a) -> None:
    import pandas as pd

    from ptft import io, provenance
    from ptft.derive.dissect import dissect_tables

    pairs = [(p["meta"], pd.read_parquet(p["base"]), pd.read_parquet(p["ft"])) for p in a.pairs]
    change, components = dissect_tables(pairs, a.config["bootstrap"])
    origin = provenance.of_inputs([p[side] for p in a.pairs for side in ("base", "ft")])
    io.write_parquet(a.change_out, change, origin)
    io.write_parquet(a.components_out, components, origin)


def add_commands(sub) -> None:
    s = sub.add_parser("derive-corpus", help="sample the documents to derive variants of")
    s.add_argument("--corpus", type=json_arg, required=True, help="the derive.corpus section")
    s.add_argument("--local-dir", default="", help="folder of a registered dataset's split files (toy, data_dir)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_derive_corpus)

    s = sub.add_parser("derive", help="rewrite every document into every variant, through the reply cache")
    s.add_argument("--corpus", required=True, help="corpus.parquet of derive-corpus")
    s.add_argument("--config", type=json_arg, required=True, help="the derive section")
    s.add_argument("--root", default=".", help="where template paths are relative to")
    s.add_argument("--templates", nargs="+", help="each variant's template file, in order (overrides the config's)")
    s.add_argument("--cache", required=True, help="SQLite reply cache (kept between runs)")
    s.add_argument("--out", required=True)
    s.add_argument("--stats", required=True)
    s.set_defaults(func=cmd_derive)

    s = sub.add_parser("dissect-loglik", help="per-token log-likelihood of every original and variant")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--trajectory", action="store_true", help="--model-dir is a run's snapshots folder: each snapshot")
    s.add_argument("--corpus", required=True)
    s.add_argument("--variants", required=True)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_dissect_loglik)

    s = sub.add_parser("dissect", help="change per variant and its topic/style/facts decomposition")
    s.add_argument("--pairs", type=json_arg, required=True, help="[{meta, base, ft}] loglik tables per model")
    s.add_argument("--config", type=json_arg, required=True, help="the aggregate section (bootstrap)")
    s.add_argument("--change-out", required=True)
    s.add_argument("--components-out", required=True)
    s.set_defaults(func=cmd_dissect)

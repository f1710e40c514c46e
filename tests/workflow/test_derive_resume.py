"""The derivation against a real HTTP server: killed mid-run, re-run, and not one request
repeated; and an API key planted in the environment appears nowhere the workflow writes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_snakemake
from helpers.chat_server import ChatServer, first_attempt_faults

SECRET = "sk-ptft-planted-4f9c1e27d3b8a6"
VARIANTS = [
    {"name": "topic", "factor": "topic", "template": "workflow/templates/derive/topic.yaml"},
    {"name": "counterfactual", "factor": "facts", "template": "workflow/templates/derive/counterfactual.yaml"},
]


def backend(server, **kw) -> dict:
    return {"name": "openai", "base_url": server.base_url, "model": "served-model", "api_key_env": "PTFT_TEST_KEY",
            "concurrency": 4, "timeout_s": 2.0, "max_retries": 4, "backoff_s": 0.01, **kw}  # fmt: skip


def cached_rows(path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def derive_cmd(tmp_path, cfg: dict) -> list[str]:
    return [sys.executable, "-m", "ptft", "derive", "--corpus", str(tmp_path / "corpus.parquet"),
            "--config", json.dumps(cfg), "--root", str(ROOT), "--cache", str(tmp_path / "cache.sqlite"),
            "--out", str(tmp_path / "variants.parquet"), "--stats", str(tmp_path / "stats.parquet")]  # fmt: skip


def test_killed_derivation_resends_only_the_missing_requests(tmp_path):
    texts = [
        f"Study {i}: the compound lowered blood pressure in {10 + i} of {40 + i} treated patients." for i in range(30)
    ]
    pd.DataFrame({"doc_id": [f"p{i}" for i in range(30)], "text": texts}).to_parquet(tmp_path / "corpus.parquet")
    env = {**os.environ, "PTFT_TEST_KEY": SECRET}
    with ChatServer(faults=first_attempt_faults(), api_key=SECRET) as server:
        cfg = {"variants": VARIANTS, "backend": backend(server), "generation": {"temperature": 0.7, "max_tokens": 200},
               "checks": {"max_attempts": 2}}  # fmt: skip
        # Answer 25 of the 60 requests, hold the rest, and kill the process once all 25 are cached.
        server.hold_after(25)
        proc = subprocess.Popen(derive_cmd(tmp_path, cfg), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while cached_rows(tmp_path / "cache.sqlite") < 25 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        server.release()
        first_ok = set(server.ok_contents())
        n_first = len(server.requests)
        assert len(first_ok) == 25 and cached_rows(tmp_path / "cache.sqlite") == 25
        assert not (tmp_path / "variants.parquet").exists()

        rerun = subprocess.run(derive_cmd(tmp_path, cfg), env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        second = server.requests[n_first:]
        # Zero repeated requests: nothing answered before the kill is asked again, and every
        # request is answered exactly once over both runs.
        assert not {r_content(r) for r in second} & first_ok
        assert all(count == 1 for count in server.ok_contents().values())
        assert server.ok_count() == 60
        assert "25 cache hits, 35 sent" in rerun.stderr
    variants = pd.read_parquet(tmp_path / "variants.parquet")
    assert len(variants) == 60 and variants["text"].str.startswith("REWRITTEN: ").all()
    assert set(variants["template_version"]) == {"1"} and set(variants["model"]) == {"served-model"}
    stats = pd.read_parquet(tmp_path / "stats.parquet")
    assert stats["cache_hits"].sum() == 25 and stats["sent"].sum() == 35 and stats["failed"].sum() == 0


def r_content(record) -> str:
    return record.body["messages"][-1]["content"]


def test_a_planted_api_key_appears_nowhere_under_results_or_in_logs(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    docs = [{"text": f"Abstract {i}. " + "The protein folds into a stable helix at body temperature. " * 3}
            for i in range(8)]  # fmt: skip
    corpus.write_text("\n".join(json.dumps(d) for d in docs))
    cfg = yaml.safe_load((ROOT / "tests/configs/micro.yaml").read_text())
    cfg["study"] = "secret"
    with ChatServer(faults=first_attempt_faults(("429", "500", "malformed")), api_key=SECRET) as server:
        cfg["derive"] = {"corpus": {"path": str(corpus), "n": 8, "min_chars": 100},
                         "variants": VARIANTS, "backend": backend(server)}  # fmt: skip
        (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
        targets = ["results/secret/derive/variants.parquet", "results/secret/report/derive_stats.html"]
        out = run_snakemake(tmp_path, tmp_path / "study.yaml", *targets, env={"PTFT_TEST_KEY": SECRET})
        assert out.returncode == 0, out.stderr[-3000:]
        assert {r.authorization for r in server.requests} == {f"Bearer {SECRET}"}  # the key was used
        assert server.outcomes()["ok"] == 16 and sum(server.outcomes().values()) > 16  # and retries happened
    assert len(pd.read_parquet(tmp_path / "results/secret/derive/variants.parquet")) == 16
    assert SECRET not in out.stdout + out.stderr
    scanned = 0
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "study.yaml":
            assert SECRET.encode() not in path.read_bytes(), path
            scanned += 1
    # results (tables, reports, the cache), every rule's log and Snakemake's own logs and metadata
    assert scanned > 10
    assert any((tmp_path / "results/secret/logs/derive").iterdir())
    assert (tmp_path / "results/secret/.state/derive/replies.sqlite").exists()


@pytest.mark.parametrize("missing", ["PTFT_UNSET_KEY"])
def test_an_unset_key_variable_stops_the_job_naming_it(tmp_path, missing):
    pd.DataFrame({"doc_id": ["a"], "text": ["x" * 50]}).to_parquet(tmp_path / "corpus.parquet")
    cfg = {"variants": VARIANTS[:1], "backend": {"name": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                                                 "api_key_env": missing}}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != missing}
    out = subprocess.run(derive_cmd(tmp_path, cfg), env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and missing in out.stderr

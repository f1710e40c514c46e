"""A bad study stops `snakemake -n` with a few lines naming the key (issue 22), not the whole schema."""

import pytest
import yaml

from conftest import ROOT, run_snakemake


def local(*names):
    return {"suite": "local", "local": [{"name": n, "path": f"/nonexistent/{i}"} for i, n in enumerate(names)]}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["finetune"].update(epochs="three"), "config key finetune.epochs: 'three' is not of type 'number'"),
        (lambda c: c.update(study=".."), "config key study: '..' does not match"),
        (lambda c: c.update(checkpoints=local("a", "b", "a")), "checkpoints.local[2].name: 'a' is also the name of"),
        (lambda c: c["evaluate"].update(shots=60), "evaluate.shots: 60 in-context examples, but data.fewshot"),
        (lambda c: c.update(checkpoints=local("a")), "checkpoint 'a' (checkpoints.local): no folder /nonexistent/0"),
    ],
)
def test_a_bad_study_stops_the_dry_run_in_a_few_lines(tmp_path, edit, message):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    edit(config)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    out = run_snakemake(tmp_path, tmp_path / "study.yaml", "-n", timeout=300)
    text = (out.stdout + out.stderr).strip()
    assert out.returncode != 0 and message in text, text[-3000:]
    # The error, its line and a short traceback; Snakemake's validate added about 700 lines of schema.
    assert len(text.splitlines()) < 12, text
    assert not (tmp_path / "results").exists()

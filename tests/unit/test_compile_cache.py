"""ptft.compile_cache: every job of a workflow compiles into one folder, unless the user chose one."""

import os

from ptft import compile_cache


def test_the_cache_is_the_results_folders_unless_the_user_set_one(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    folder = compile_cache.share("results")
    assert folder == str(tmp_path / "results" / ".cache" / "torchinductor")  # absolute: jobs may change folder
    assert os.environ[compile_cache.ENV] == folder
    assert compile_cache.share("elsewhere") == folder  # set once, the first study's stays for its commands
    monkeypatch.setenv(compile_cache.ENV, "/scratch/mine")
    assert compile_cache.share("results") == "/scratch/mine"

"""ptft.io.atomic_path: a write killed outright leaves a temporary sibling, which the next write removes."""

import logging
import os
import signal
import subprocess
import sys

from ptft import io

# Starts an atomic write of a 3 MB file, says so, and waits to be killed.
KILLED_WRITER = """
import sys, time
from ptft import io
with io.atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(bytes(3_000_000))
    print("writing", flush=True)
    time.sleep(120)
"""


def leftovers(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.{io.TMP_MARK}"))


def killed_write(path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()


def test_a_killed_write_is_cleared_by_the_next_write_of_the_same_file(tmp_path, caplog):
    target = tmp_path / "model.safetensors"
    killed_write(target)
    assert not target.exists() and len(leftovers(tmp_path, target.name)) == 1
    # Dot-files that are not this target's temporary folders stay.
    (tmp_path / ".model.safetensors.lock").write_text("keep")
    (tmp_path / f".model.safetensors.{io.TMP_MARK}notadir1").write_text("a file, not a write's folder")
    (tmp_path / ".model.safetensors.x1y2z3").mkdir()
    (tmp_path / f".other.bin.{io.TMP_MARK}abcdefgh").mkdir()
    (tmp_path / f".model.safetensors.{io.TMP_MARK}x.{io.TMP_MARK}abcdefgh").mkdir()  # of another file's write
    (tmp_path / ".hidden").write_text("keep")

    with caplog.at_level(logging.WARNING, logger="ptft.io"):
        io.write_text(target, "done")

    assert target.read_text() == "done"
    assert leftovers(tmp_path, target.name) == [
        f".model.safetensors.{io.TMP_MARK}notadir1",
        f".model.safetensors.{io.TMP_MARK}x.{io.TMP_MARK}abcdefgh",
    ]
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.safetensors",
        ".model.safetensors.lock",
        f".model.safetensors.{io.TMP_MARK}notadir1",
        ".model.safetensors.x1y2z3",
        f".other.bin.{io.TMP_MARK}abcdefgh",
        f".model.safetensors.{io.TMP_MARK}x.{io.TMP_MARK}abcdefgh",
        ".hidden",
    }
    assert "3.0 MB" in caplog.text and "model.safetensors" in caplog.text


def test_a_folder_write_clears_the_leftover_of_a_killed_folder_write(tmp_path):
    stale = tmp_path / f".model.{io.TMP_MARK}k3j2_x9a"  # as mkdtemp names it
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.safetensors").write_bytes(bytes(1000))

    io.write_dir(tmp_path / "model", lambda tmp: (tmp / "config.json").write_text("{}"))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["config.json"]


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    target = tmp_path / "t.json"
    try:
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []

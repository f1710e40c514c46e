"""The reply cache's SQLite journal mode: WAL on a local file system, the rollback journal elsewhere.

WAL shares its index through memory mapped by every process, which only works on one host; on
NFS, Lustre, GPFS... the cache must use the rollback journal (src/ptft/derive/cache.py).
"""

import sqlite3

import pytest

from ptft.derive import cache
from ptft.derive.backend import Reply
from ptft.derive.cache import ReplyCache, choose_journal_mode, filesystem_type

MOUNTS = """\
overlay / overlay rw,relatime,lowerdir=/a,upperdir=/b,workdir=/c 0 0
proc /proc proc rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
fs1:/export/home /home nfs4 rw,relatime,vers=4.2,hard,proto=tcp 0 0
/dev/sda1 /home/local ext4 rw,relatime 0 0
10.0.0.1@o2ib:/scratch /scratch lustre rw,flock,lazystatfs 0 0
gpfs0 /gpfs gpfs rw,relatime 0 0
//srv/share /mnt/my\\040share cifs rw,vers=3.0 0 0
beegfs_nodev /mnt/beegfs beegfs rw,relatime,cfgFile=/etc/beegfs/beegfs-client.conf 0 0
10.0.0.2:6789:/ /ceph ceph rw,relatime,name=admin 0 0
/dev/sdb1 /data xfs rw,relatime 0 0
fs2:/data /data nfs rw,relatime,vers=3 0 0
"""


@pytest.mark.parametrize(
    "path, fstype",
    [
        ("/home/alice/results/s/.state/derive/replies.sqlite", "nfs4"),
        ("/home", "nfs4"),  # the mount point itself
        ("/home/local/results", "ext4"),  # a local disk mounted inside the NFS home
        ("/homework/x", "overlay"),  # a prefix of /home's name, not a path below it
        ("/scratch/u/results", "lustre"),
        ("/gpfs/projects/p", "gpfs"),
        ("/mnt/my share/results", "cifs"),  # \040 in the table is a space
        ("/mnt/beegfs/r", "beegfs"),
        ("/ceph/r", "ceph"),
        ("/data/r", "nfs"),  # the later of two mounts on one point hides the earlier
        ("/tmp/x", "tmpfs"),
        ("/opt/x", "overlay"),
    ],
)
def test_filesystem_type_is_that_of_the_longest_mount_point_above_the_path(path, fstype):
    assert filesystem_type(path, MOUNTS) == fstype


def test_filesystem_type_without_a_mount_table_is_unknown(tmp_path, monkeypatch):
    assert filesystem_type("/x", "") is None
    monkeypatch.setattr(cache, "MOUNTS", tmp_path / "no-such-file")
    assert filesystem_type("/x") is None


@pytest.mark.parametrize(
    "fstype", ["nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "beegfs", "ceph", "fuse.sshfs", "9p", None]
)
def test_network_or_unknown_file_systems_get_the_rollback_journal(fstype):
    assert choose_journal_mode(fstype) == "DELETE"


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay"])
def test_local_file_systems_get_wal(fstype):
    assert choose_journal_mode(fstype) == "WAL"


def mount_table(monkeypatch, tmp_path, fstype: str) -> None:
    """Make /proc/mounts (as the cache reads it) say that tmp_path is on a file system of ``fstype``."""
    table = tmp_path / "mounts"
    table.write_text(f"overlay / overlay rw 0 0\nserver:/export {tmp_path} {fstype} rw,vers=4.2 0 0\n")
    monkeypatch.setattr(cache, "MOUNTS", table)


def reply(i: int) -> Reply:
    return Reply(f"reply {i}", 10 + i, 20 + i)


def put(c: ReplyCache, i: int) -> None:
    c.put(f"k{i}", "toy", "m", "v1", {"i": i}, reply(i))


def test_cache_on_nfs_uses_the_rollback_journal_and_two_connections_share_it(tmp_path, monkeypatch):
    mount_table(monkeypatch, tmp_path, "nfs4")
    path = tmp_path / ".state/derive/replies.sqlite"
    with ReplyCache(path) as writer, ReplyCache(path) as reader:
        assert (writer.journal_mode, reader.journal_mode) == ("DELETE", "DELETE")
        put(writer, 1)
        assert reader.get_many(["k1", "k2"]) == {"k1": reply(1)}  # committed at once: the other sees it
        put(reader, 2)
        assert writer.get_many(["k1", "k2"]) == {"k1": reply(1), "k2": reply(2)}
        assert len(writer) == len(reader) == 2
        # No WAL files next to the database: nothing that needs memory shared between hosts.
        assert not list(path.parent.glob("*-wal")) and not list(path.parent.glob("*-shm"))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # stored in the file
    with ReplyCache(path) as again:
        assert again.get_many(["k1", "k2"]) == {"k1": reply(1), "k2": reply(2)}


def test_cache_on_a_local_disk_uses_wal(tmp_path, monkeypatch):
    mount_table(monkeypatch, tmp_path, "ext4")
    path = tmp_path / "replies.sqlite"
    with ReplyCache(path) as writer, ReplyCache(path) as reader:
        assert writer.journal_mode == "WAL"
        put(writer, 1)
        assert reader.get_many(["k1"]) == {"k1": reply(1)}


def test_a_wal_cache_moved_to_nfs_is_switched_to_the_rollback_journal(tmp_path, monkeypatch):
    path = tmp_path / "replies.sqlite"
    mount_table(monkeypatch, tmp_path, "xfs")
    with ReplyCache(path) as c:
        put(c, 1)
        assert c.journal_mode == "WAL"
    mount_table(monkeypatch, tmp_path, "lustre")
    with ReplyCache(path) as c:
        assert c.journal_mode == "DELETE"
        assert c.get_many(["k1"]) == {"k1": reply(1)}


def test_journal_mode_can_be_given(tmp_path):
    with ReplyCache(tmp_path / "a.sqlite", journal_mode="delete") as c:
        assert c.journal_mode == "DELETE"
    with pytest.raises(ValueError, match="WAL or DELETE"):
        ReplyCache(tmp_path / "b.sqlite", journal_mode="memory")

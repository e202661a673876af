"""genperf.checkpoint: atomic publishing of sharded checkpoint directories."""

from genperf.checkpoint import find_sharded, publish_dir


def _checkpoint(path, step):
    path.mkdir()
    (path / "meta.pt").write_text(str(step))


def test_publish_replaces_the_previous_checkpoint(tmp_path):
    _checkpoint(tmp_path / "checkpoint", 1)
    _checkpoint(tmp_path / "checkpoint.tmp", 2)
    publish_dir(str(tmp_path / "checkpoint.tmp"), str(tmp_path / "checkpoint"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert (tmp_path / "checkpoint" / "meta.pt").read_text() == "2"


def test_a_crash_between_the_renames_falls_back_to_the_old_checkpoint(tmp_path):
    _checkpoint(tmp_path / "checkpoint.old", 1)  # renamed away; the new one never arrived
    assert find_sharded(str(tmp_path)) == str(tmp_path / "checkpoint.old")


def test_an_unfinished_directory_is_not_a_checkpoint(tmp_path):
    (tmp_path / "checkpoint").mkdir()  # shards written, meta.pt (written last) missing
    assert find_sharded(str(tmp_path)) is None

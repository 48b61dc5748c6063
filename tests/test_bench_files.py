"""bench/files.py's own measurements, on this machine (no figures asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.files import MB, disk_mb_s


def test_the_disk_floor_writes_a_new_file_syncs_it_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert disk_mb_s(tmp_path, 3 * MB + 5) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

import os
import stat

import pytest

from common.io.atomic import atomic_path, atomic_write_json


def test_written_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failure_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_text("previous result")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]

"""Run-directory markers: where they go, what they hold, who writes them, and the metrics
rebuilt from the iterations (exact paths and contents)."""

from __future__ import annotations

import json
from pathlib import Path

from rspo.selfplay.rundir import RunDir
from rspo.utils.io import atomic_write_json


def test_marker_path_contents_and_readers(tmp_path):
    rd = RunDir(tmp_path / "run")
    assert rd.iter_dir(7) == tmp_path / "run" / "iter_007"
    assert rd.checkpoint(12) == tmp_path / "run" / "iter_012" / "checkpoint"
    assert not rd.done(7, "score")
    rd.mark_done(7, "score", {"examples": 3})
    marker = json.loads((tmp_path / "run" / "iter_007" / "score.done").read_text())
    assert marker["examples"] == 3 and isinstance(marker["time"], float)
    assert rd.done(7, "score") and not rd.done(7, "train") and not rd.done(8, "score")
    reader = RunDir(tmp_path / "run", writer=False)
    reader.mark_done(7, "train")  # another rank: reads the markers, never writes one
    assert reader.done(7, "score") and not reader.done(7, "train")
    rd.mark_done(7, "train")
    assert set(json.loads((rd.iter_dir(7) / "train.done").read_text())) == {"time"}


def test_rebuild_metrics_stops_at_upto_and_only_the_writer_writes(tmp_path):
    rd = RunDir(tmp_path)
    for t in range(4):
        atomic_write_json(rd.iter_dir(t) / "metrics.json", {"iteration": t})
    rd.iter_dir(4).mkdir()  # an iteration without metrics yet
    assert RunDir(tmp_path, writer=False).rebuild_metrics(2) == [{"iteration": t} for t in range(3)]
    assert not (tmp_path / "metrics.jsonl").exists()
    assert rd.rebuild_metrics(2) == [{"iteration": t} for t in range(3)]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"iteration": t} for t in range(3)]
    assert len(rd.rebuild_metrics()) == 4


def test_overwrite_through_a_link_survives_a_file_that_cannot_be_deleted(tmp_path, monkeypatch):
    """Emptying a symlinked run in place: the old contents are moved into one hidden folder
    first, so a file that cannot be deleted (busy on NFS, say) leaves that folder behind
    and the run empty, instead of failing the --overwrite; the next one removes it."""
    import os

    from rspo.selfplay.rundir import remove_output

    target = tmp_path / "elsewhere"
    (target / "iter_001").mkdir(parents=True)
    (target / "iter_001" / "busy").write_text("x")
    (target / "run.json").write_text('{"rspo": "0.1.0"}')
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    unlink = os.unlink

    def stuck(path, *a, **k):
        if os.fspath(path).endswith("busy"):
            raise PermissionError(1, "Operation not permitted", os.fspath(path))
        return unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", stuck)
    remove_output(link)
    left = list(target.iterdir())
    assert [p.name.startswith(".deleting.") for p in left] == [True]
    assert [p.relative_to(left[0]) for p in left[0].rglob("*")] == [
        Path("iter_001"), Path("iter_001/busy")
    ]  # fmt: skip
    monkeypatch.setattr(os, "unlink", unlink)
    remove_output(link)
    assert link.is_symlink() and list(target.iterdir()) == []

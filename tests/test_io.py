"""Crash-safe I/O helpers and seed derivation."""

import pytest

from rspo.utils.io import append_jsonl, atomic_write_text, read_jsonl
from rspo.utils.seeds import derive_seed


def test_torn_tail_is_dropped_and_truncated(tmp_path):
    p = tmp_path / "x.jsonl"
    append_jsonl(p, [{"a": 1}, {"a": 2}])
    with open(p, "a") as f:
        f.write('{"a": 3')  # a write cut by a crash
    assert read_jsonl(p, tolerate_torn_tail=True) == [{"a": 1}, {"a": 2}]
    append_jsonl(p, [{"a": 4}])
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}, {"a": 4}]


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON"):
        read_jsonl(p)


def test_unicode_line_separators_inside_records_round_trip(tmp_path):
    # json.dumps(ensure_ascii=False) leaves U+0085/U+2028/U+2029 raw; str.splitlines() would
    # cut records there (a random-init policy's generations.jsonl crashed the loop this way)
    p = tmp_path / "gen.jsonl"
    recs = [{"text": "a\u2028b\x85c\u2029d\x0be"}, {"text": "plain"}]
    append_jsonl(p, recs)
    assert read_jsonl(p) == recs
    assert read_jsonl(p, tolerate_torn_tail=True) == recs


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "hello")
    assert (tmp_path / "f.txt").read_text() == "hello"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "gen", 1, 2, 3) == derive_seed(0, "gen", 1, 2, 3)
    seeds = {derive_seed(0, "gen", 1, i, k) for i in range(50) for k in range(8)}
    assert len(seeds) == 400
    assert 0 <= derive_seed("x") < 2**63


def test_atomic_writes_get_the_permissions_a_plain_open_would(tmp_path):
    import os
    import stat

    from rspo.utils.io import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "atomic.txt") == mode(plain)

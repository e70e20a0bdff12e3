"""Rough edges met by a new user (issue 21): each behaviour checked where it is visible."""

from __future__ import annotations

import pytest

from rspo.cli import main


@pytest.mark.parametrize("command", ["train", "eval", "demo", "config"])
def test_help_documents_config_overrides_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--section.key VALUE" in out
    assert "--training.lr 5e-7" in out  # the example

"""``model.path`` aliases: the gym's base models and a user's own, via register_model_alias."""

from __future__ import annotations

from pathlib import Path

import pytest

from rspo.modeling import MODEL_ALIASES, register_model_alias, resolve_model_path


@pytest.fixture
def restore_aliases():
    saved = dict(MODEL_ALIASES)
    yield
    MODEL_ALIASES.clear()
    MODEL_ALIASES.update(saved)


def test_the_gym_registers_its_base_models():
    root = Path(__file__).resolve().parent.parent / "rspo" / "gym" / "assets"
    assert resolve_model_path("gym") == str(root / "base")
    assert resolve_model_path("gym-skills") == str(root / "skills_base")


def test_a_registered_alias_resolves_when_used(tmp_path, restore_aliases):
    calls = []

    def locate() -> Path:
        calls.append(1)
        return tmp_path

    register_model_alias("team-base", locate)
    assert calls == []  # located on use, not on registration
    assert resolve_model_path("team-base") == str(tmp_path)
    assert calls == [1]


def test_a_missing_asset_fails_with_its_locators_message(restore_aliases):
    def locate() -> Path:
        raise FileNotFoundError("team-base weights missing at /nowhere; rebuild them")

    register_model_alias("team-base", locate)
    with pytest.raises(FileNotFoundError, match="team-base weights missing"):
        resolve_model_path("team-base")


def test_an_alias_from_run_imports_names_the_model(tmp_path, monkeypatch, restore_aliases):
    (tmp_path / "team_models.py").write_text(
        "from pathlib import Path\nimport rspo\n"
        f"rspo.register_model_alias('team-base', lambda: Path({str(tmp_path)!r}))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from rspo.config import load_config

    load_config(overrides={"run.imports": ["team_models"], "model.path": "team-base"})
    assert resolve_model_path("team-base") == str(tmp_path)


def test_the_alias_registry_is_public():
    import rspo

    assert rspo.register_model_alias is register_model_alias


def test_a_hub_name_that_is_not_an_alias_passes_through():
    assert resolve_model_path("org/model-that-is-not-here") == "org/model-that-is-not-here"

"""rspo's import graph has no cycles, and the layers point one way (scripts/import_graph.py)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
ig = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = ig
_spec.loader.exec_module(ig)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return ig.import_graph(ROOT / "rspo")


def test_rspo_has_no_import_cycles(graph):
    found = ig.cycles(graph)
    assert not found, "\n".join(ig.describe(graph, c) for c in found)


def test_the_judge_layer_never_imports_the_gym(graph):
    """The gym registers its judges (rspo.utils.plugins); rspo.judges does not reach up."""
    up = [(m, t) for m, ts in graph.items() if m.startswith("rspo.judges") for t in ts]
    assert [e for e in up if e[1].startswith("rspo.gym")] == []


def test_model_loading_never_imports_the_gym(graph):
    """``model.path: gym`` resolves through aliases the gym registers (rspo.gym.models)."""
    assert not {t for t in graph["rspo.modeling"] if t.startswith("rspo.gym")}


def test_the_config_is_a_foundation(graph):
    """rspo.config imports only the objectives (regularizer specs, presets) and utils: every
    layer may import it, and it imports none of them."""
    assert {t.split(".")[1] for t in graph["rspo.config"]} <= {"objectives", "utils"}


def test_generation_backends_depend_on_their_base_never_the_reverse(graph):
    assert not {t for t in graph["rspo.generation.base"] if t.startswith("rspo.")}


# ------------------------------------------------------------------ the checker itself
def _package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "pkg"
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return pkg


def test_a_cycle_through_a_local_import_is_found(tmp_path, capsys):
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import g\n\ndef f():\n    return g()\n",
            "b.py": "def g():\n    from . import a  # a local import closes the loop\n"
            "    return a\n",
            "c.py": "import pkg.a\n",
        },
    )
    graph = ig.import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert ig.cycles(graph) == [["pkg.a", "pkg.b"]]
    assert ig.main([str(pkg)]) == 1
    assert "cycle of 2 modules: pkg.a, pkg.b" in capsys.readouterr().out


def test_package_inits_relative_imports_and_import_module_count(tmp_path):
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "from .sub import helper\n",  # a name defined in sub/__init__
            "sub/__init__.py": "import importlib\n\ndef helper():\n"
            "    for m in ('top',):\n        importlib.import_module(f'pkg.{m}')\n",
            "sub/leaf.py": "from .. import top\nfrom . import helper\n",
            "top.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg\n",
        },
    )
    graph = ig.import_graph(pkg)
    assert graph["pkg"] == {"pkg.sub"}
    assert graph["pkg.sub"] == {"pkg.top"}
    assert graph["pkg.sub.leaf"] == {"pkg.top", "pkg.sub"}
    assert graph["pkg.top"] == {"pkg"}  # type-only imports count
    assert ig.cycles(graph) == [["pkg", "pkg.sub", "pkg.top"]]


def test_an_acyclic_package_passes(tmp_path, capsys):
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "from pkg.api import run\n",
            "api.py": "from pkg import core\n\ndef run():\n    from pkg.util import x\n"
            "    return core.f() + x\n",
            "core.py": "from pkg.util import x\n\ndef f():\n    return x\n",
            "util.py": "import os\nx = 1\n",
        },
    )
    assert ig.cycles(ig.import_graph(pkg)) == []
    assert ig.main([str(pkg)]) == 0
    assert "0 cycles" in capsys.readouterr().out

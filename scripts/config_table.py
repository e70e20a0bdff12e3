"""Print the Markdown table of every config key (default and meaning) for the README."""

import ast
import dataclasses
import inspect
import typing

import rspo.config as C


def _nested_dataclass(cls: type, name: str) -> type | None:
    """The dataclass inside a field typed ``SomeConfig | None`` (e.g. model.lora), else None."""
    tp = typing.get_type_hints(cls)[name]
    args = typing.get_args(tp) or (tp,)
    return next((a for a in args if dataclasses.is_dataclass(a)), None)


def _rows(cls: type, obj, prefix: str, tree: ast.Module, lines: list[str]) -> None:
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    for st in node.body:
        if isinstance(st, ast.AnnAssign):
            i, com = st.lineno - 2, []
            while i >= 0 and lines[i].strip().startswith("#:"):
                com.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            default = getattr(obj, st.target.id)
            text = " ".join(com).replace("|", "\\|")
            print(f"| `{prefix}.{st.target.id}` | `{default!r}` | {text} |")
            sub = _nested_dataclass(cls, st.target.id)
            if sub is not None:  # an optional sub-section: its keys with their own defaults
                _rows(sub, default or sub(), f"{prefix}.{st.target.id}", tree, lines)


def main() -> None:
    src = inspect.getsource(C)
    tree = ast.parse(src)
    lines = src.splitlines()
    cfg = C.Config()
    print("| key | default | meaning |\n|---|---|---|")
    for sec in dataclasses.fields(cfg):
        obj = getattr(cfg, sec.name)
        _rows(type(obj), obj, sec.name, tree, lines)


if __name__ == "__main__":
    main()

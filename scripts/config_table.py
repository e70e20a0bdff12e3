"""Print the Markdown table of every config key (default and meaning) for the README."""

import ast
import dataclasses
import inspect

import rspo.config as C


def main() -> None:
    src = inspect.getsource(C)
    tree = ast.parse(src)
    lines = src.splitlines()
    cfg = C.Config()
    print("| key | default | meaning |\n|---|---|---|")
    for sec in dataclasses.fields(cfg):
        cls = type(getattr(cfg, sec.name))
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
        for st in node.body:
            if isinstance(st, ast.AnnAssign):
                i, com = st.lineno - 2, []
                while i >= 0 and lines[i].strip().startswith("#:"):
                    com.insert(0, lines[i].strip()[2:].strip())
                    i -= 1
                default = getattr(getattr(cfg, sec.name), st.target.id)
                text = " ".join(com).replace("|", "\\|")
                print(f"| `{sec.name}.{st.target.id}` | `{default!r}` | {text} |")


if __name__ == "__main__":
    main()

"""Replace the config table in README.md with the output of scripts/config_table.py."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def main() -> None:
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_table.py")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    start = lines.index("| key | default | meaning |")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    (ROOT / "README.md").write_text("\n".join(lines[:start] + [table] + lines[end:]) + "\n")


if __name__ == "__main__":
    main()

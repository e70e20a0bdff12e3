"""`rspo demo --quick`: the embedded default end to end (the CI smoke test of the demo)."""

import json
import math

import pytest

from rspo.cli import main
from rspo.gym.skills.tasks import SKILLS


@pytest.mark.slow
def test_quick_demo_writes_summary_plots_and_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"sppo", "rspo"}
    for m in summary["methods"].values():
        for key in (
            "win_rate",
            "win_rate_ci",
            "lc_win_rate",
            "avg_length",
            "accuracy",
            "self_bleu",
            "proxy_win_rate",
            "kl_ref",
            "kl_ref_per_token",
            *(f"win_rate_{skill}" for skill in SKILLS),
        ):
            assert key in m
        assert 0.0 <= m["proxy_win_rate"] <= 1.0 and math.isfinite(m["kl_ref"])
        lo, hi = m["win_rate_ci"]
        assert 0.5 < lo <= m["win_rate"] <= hi <= 1.0  # the gym's power: both beat π_ref
        assert 0.0 <= m["accuracy"] <= 1.0 and m["avg_length"] > 0 and math.isfinite(m["self_bleu"])
    assert summary["methods"]["rspo"]["regularizer"] and summary["methods"]["sppo"]["coef"] == 0.0
    for f in (
        "report.html",
        "table.md",
        "plots/metrics_per_iteration.png",
        "plots/length_vs_winrate.png",
        "plots/frontier.png",
        "sppo/iter_002/annotations.json",
    ):
        assert (out / f).stat().st_size > 0
    rows = (out / "sppo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["iteration"] for r in rows] == [0, 1, 2]
    assert json.loads(rows[0])["kl_ref"] == 0.0
    # self-play on the skills gym sharpens the base: more right answers than π_0 gives
    first, last = json.loads(rows[0]), json.loads(rows[-1])
    assert last["accuracy"] > first["accuracy"] + 0.03 and last["kl_ref"] > 0


def test_demo_overwrite_starts_over(tmp_path, monkeypatch):
    """`rspo demo --overwrite` removes an earlier demo's output, but only once the demo's
    configs are valid: a bad override or float16 stops it with the old output kept."""
    import rspo.demo

    out = tmp_path / "demo"
    (out / "sppo").mkdir(parents=True)
    (out / "sppo" / "run.json").write_text('{"rspo": "0.1.0"}')  # an earlier demo's run
    (out / "old.txt").write_text("from an earlier demo")
    for bad in (["--objective.eta", "x"], ["--model.dtype", "float16"]):
        assert main(["demo", "--quick", "--output", str(out), "--overwrite", *bad]) == 2
        assert (out / "old.txt").exists(), bad
    seen = []
    monkeypatch.setattr(rspo.demo, "run_demo", lambda output, **k: seen.append(output))
    assert main(["demo", "--quick", "--output", str(out), "--overwrite"]) == 0
    assert seen == [str(out)] and not out.exists()  # deleted, then the demo ran
    other = tmp_path / "mine"  # not rspo output: refused, kept
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(["demo", "--quick", "--output", str(other), "--overwrite"]) == 2
    assert (other / "notes.txt").read_text() == "keep"

import json

import pytest

from emomoe.cli import main
from tests.analyze.conftest import single_domain_store
from tests.fixtures import save_tiny_checkpoint

FAST = ["--num-docs", "3", "--tokens-per-doc", "24", "--clusters.num-clusters", "3", "--no-progress"]


@pytest.mark.slow
def test_analyze_writes_json_figures_html_and_report(
    tmp_path, analysis_checkpoints, analysis_store, sweep_dir, capsys
):
    out = tmp_path / "analysis"
    args = ["analyze", "--checkpoints", str(analysis_checkpoints["emo"]), str(analysis_checkpoints["std"]),
            "--names", "emo", "std", "--data", str(analysis_store), "--sweep", str(sweep_dir), "--out", str(out), *FAST]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| metric | emo | std |" in printed and f"wrote {out / 'report.md'}" in printed
    analysis = json.loads((out / "analysis.json").read_text())
    assert list(analysis["models"]) == ["emo", "std"] and analysis["settings"]["clusters"]["num_clusters"] == 3
    assert list(analysis["subset_overlap"]) == ["emo"]
    report = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted([
        "by_layer.png", "clusters.png", "coverage.png", "domain_expert_emo.png", "domain_expert_std.png",
        "similarity_mean_prob.png", "similarity_topk_freq.png", "subset_overlap.png",
    ])
    for png in pngs:
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in report
    page = (out / "clusters.html").read_text()
    examples = [m["clusters"]["examples"][d] for m in analysis["models"].values() for d in analysis["domains"]]
    assert page.count('<span style="background') == sum(len(e["pieces"]) for e in examples) + page.count("<li>")
    assert main(args) == 2 and "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("no-domains", "the analysis compares domains, but the store has only 1 (all)"),
    ("vocab", "the data's vocabulary (3"),
    ("k", "k = 100000 is more than the"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(
    tmp_path, analysis_checkpoints, analysis_store, capsys, case, message
):
    checkpoint, data, extra = analysis_checkpoints["emo"], analysis_store, []
    if case == "no-domains":
        data = single_domain_store(tmp_path / "one")
    elif case == "vocab":
        checkpoint = save_tiny_checkpoint(tmp_path / "v256", analysis_store, "vocab_size=256")
    else:
        extra = ["--clusters.num-clusters", "100000"]
    out = tmp_path / "out"
    capsys.readouterr()  # building the inputs may warn (e.g. how many documents were held out)
    code = main(["analyze", "--checkpoints", str(checkpoint), "--data", str(data), "--out", str(out), *FAST, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()

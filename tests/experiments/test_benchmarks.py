import json

import pytest

from emomoe.cli import main
from emomoe.evaluate.continuation import GROUP, task_name, write_continuation_tasks
from emomoe.experiments.benchmarks import go_offline, scores_table, task_scores
from emomoe.train.config import RunConfig
from tests.fixtures import build_store, save_tiny_checkpoint, word_documents

TASK_ARGS = {"num_items": 4, "context_tokens": 24, "continuation_tokens": 6}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory (config.yaml naming its store) with a tiny random model in final/."""
    root = tmp_path_factory.mktemp("lmeval")
    words = {"en": "alpha beta gamma delta epsilon".split(), "zh": list("专家模型路由训练数据")}
    docs = word_documents(words, 20, num_words=(60, 140))
    store = build_store(docs, root / "store", vocab_size=300, val_fraction=0.25)
    RunConfig.from_dict({"data": {"store": str(store)}}).to_yaml(root / "config.yaml")
    return save_tiny_checkpoint(root / "final", store), store


def _argmax_accuracy(lm, task_file):
    """The accuracy the items should get: argmax over the choices of the adapter's loglikelihoods."""
    from lm_eval.api.instance import Instance

    items = [json.loads(line) for line in open(task_file)]
    requests = [Instance("loglikelihood", {}, (it["context"], c), 0) for it in items for c in it["choices"]]
    logprobs = [lp for lp, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    hits = [max(range(4), key=lambda c: logprobs[4 * i + c]) == it["label"] for i, it in enumerate(items)]
    return sum(hits) / len(hits)


@pytest.mark.slow
def test_the_shipped_task_runs_through_lm_eval_from_the_cli_and_the_python_api(run, tmp_path, capsys):
    go_offline()
    from emomoe.experiments.harness import EmoLM

    final, store = run
    out = tmp_path / "results.json"
    args = ["lm-eval", "--checkpoint", str(final), "--tasks", GROUP, "--out", str(out)]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in TASK_ARGS.items()]
    assert main(args) == 0
    table = capsys.readouterr().out
    cli_scores = task_scores(json.loads(out.read_text()))
    assert set(cli_scores) == {GROUP, task_name("en"), task_name("zh")}
    assert cli_scores[GROUP]["n"] == 8 and table.startswith(scores_table(cli_scores).splitlines()[0])

    write_continuation_tasks(store, tmp_path / "tasks", **TASK_ARGS)  # the same seed: the same items
    lm = EmoLM(checkpoint=str(final))
    for domain in ("en", "zh"):
        expected = _argmax_accuracy(lm, tmp_path / "tasks" / f"{task_name(domain)}.jsonl")
        assert cli_scores[task_name(domain)]["acc"] == pytest.approx(expected)

    import lm_eval  # the registered model name, as a user of lm-eval's Python API writes it
    from lm_eval.tasks import TaskManager

    api = lm_eval.simple_evaluate(
        model="emomoe", model_args=f"checkpoint={final},batch_size=2", tasks=[task_name("zh")],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
    )
    assert task_scores(api)[task_name("zh")]["acc"] == cli_scores[task_name("zh")]["acc"]


def test_without_a_token_store_the_shipped_task_is_a_one_line_error(run, tmp_path, capsys):
    lonely = save_tiny_checkpoint(tmp_path / "lonely", run[1])
    assert main(["lm-eval", "--checkpoint", str(lonely), "--tasks", GROUP, "--tokenizer", str(run[1])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "the shipped tasks (emomoe_continuation) need a token store: pass --data" in err

import json

import pytest
import torch
import yaml

from emomoe.checkpoint.selection import SELECTION_FILE
from emomoe.cli import main
from emomoe.data.tasks import TaskSplits
from emomoe.errors import DataError
from emomoe.evaluate.domain_task import DOMAIN_TASK, write_domain_task
from emomoe.experiments.benchmarks import go_offline, load_tasks
from emomoe.experiments.task_data import format_example, subsample, task_examples
from tests.fixtures import save_tiny_checkpoint

COLORS = ["red", "green", "blue"]


def _item(i):
    return {"question": f"What color is thing {i}?", "label": i % 3, "answer": f"It is {COLORS[i % 3]}."}


def _write_task(folder, name, splits, **config):
    """A multiple-choice task `name` over local jsonl files, one per split: {split: [items]}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, items in splits.items():
        files[split] = str(folder / f"{name}.{split}.jsonl")
        with open(files[split], "w") as f:
            f.writelines(json.dumps(item) + "\n" for item in items)
    task = {
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": files}, "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "Q: {{question}}\nA:", "doc_to_choice": COLORS,
        "doc_to_target": "label", "metric_list": [{"metric": "acc"}], **config,
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task))
    return folder


@pytest.fixture(scope="module", autouse=True)
def offline():
    go_offline()


def test_a_choice_task_example_is_the_prompt_lm_eval_scores_with_its_gold_choice(tmp_path):
    folder = _write_task(tmp_path, "colors", {"train": [_item(i) for i in range(4)], "test": [_item(i) for i in range(4, 9)]},
                         training_split="train")
    loaded = load_tasks(["colors"], include_path=[folder])
    task = loaded["tasks"]["colors"]
    task.build_all_requests(rank=0, world_size=1)  # lm-eval's own requests: (context, " choice") per choice
    for doc_id, doc in enumerate(task.test_docs()):
        [gold] = [i for i in task.instances if i.doc_id == doc_id and i.idx == doc["label"]]
        text = format_example("colors", task, doc)
        assert (text.prompt, text.answer) == gold.args


def test_a_generation_example_is_the_document_as_lm_eval_shows_it_as_a_demonstration(tmp_path):
    # The only training document is the one-shot demonstration of every test prompt.
    folder = _write_task(
        tmp_path, "say", {"train": [_item(0)], "test": [_item(1), _item(2)]}, training_split="train",
        output_type="generate_until", doc_to_target="{{answer}}", doc_to_choice=None, num_fewshot=1,
        generation_kwargs={"until": ["\n"]}, metric_list=[{"metric": "exact_match"}],
    )
    task = load_tasks(["say"], include_path=[folder])["tasks"]["say"]
    [demo] = list(task.training_docs())
    first_test = task.fewshot_context(next(iter(task.test_docs())), 1)
    with pytest.raises(DataError, match="^task say: 1-shot prompts of its own few-shot documents need 2 of them"):
        format_example("say", task, demo)  # a document is never its own demonstration
    task.set_config(key="num_fewshot", value=0)
    text = format_example("say", task, demo)
    assert first_test.startswith(text.prompt + text.answer + task.config.fewshot_delimiter)
    assert text.answer == " It is red."


def test_a_document_is_never_its_own_demonstration(store_dir, tmp_path):
    write_domain_task(store_dir, tmp_path / "t", num_items=2, context_tokens=12)
    loaded = load_tasks([DOMAIN_TASK], include_path=[tmp_path / "t"], num_fewshot=5)  # 6 training items
    examples = task_examples(DOMAIN_TASK, loaded, TaskSplits.MERGED)
    assert len(examples.calibration) == 6 == len(examples.finetune)
    passages = [doc["prompt"] for doc in loaded["tasks"][DOMAIN_TASK].training_docs()]
    for text, own in zip(examples.calibration, passages):
        demos, _, question = text.prompt.rpartition("\n\n")
        assert question == own and own not in demos
        assert sorted(p for p in passages if p in demos) == sorted(p for p in passages if p != own)


def test_calibration_draws_nest_like_the_official_scripts_draw():
    items = list(range(20))
    official = torch.randperm(20, generator=torch.Generator().manual_seed(1)).tolist()  # greedy_prune_layerwise.py
    assert subsample(items, 5, seed=1) == official[:5]
    assert subsample(items, 10, seed=1)[:5] == subsample(items, 5, seed=1)
    assert sorted(subsample(items, 0, seed=1)) == items


def test_merged_splits_pool_train_and_validation_and_separate_splits_do_not(tmp_path):
    splits = {"train": [_item(i) for i in range(3)], "validation": [_item(i) for i in range(3, 5)],
              "test": [_item(i) for i in range(5, 9)]}
    folder = _write_task(tmp_path, "colors", splits, training_split="train", validation_split="validation")
    loaded = load_tasks(["colors"], include_path=[folder])
    merged = task_examples("colors", loaded, TaskSplits.MERGED)
    separate = task_examples("colors", loaded, TaskSplits.SEPARATE)
    assert len(merged.calibration) == len(merged.finetune) == 5
    assert len(separate.calibration) == 2 and len(separate.finetune) == 3
    assert merged.info["sources"]["colors"] == {"held_out": "test", "calibration": ["train", "validation"],
                                                 "finetune": ["train", "validation"], "num_fewshot": 0}


def test_a_validation_split_the_task_does_not_name_is_still_its_pool(tmp_path):
    # lm-eval's MMLU names only its test and few-shot splits; its dataset has a validation split.
    splits = {"validation": [_item(i) for i in range(3)], "test": [_item(i) for i in range(3, 6)]}
    loaded = load_tasks(["colors"], include_path=[_write_task(tmp_path, "colors", splits)])
    assert len(task_examples("colors", loaded, TaskSplits.MERGED).calibration) == 3


@pytest.mark.parametrize(("splits", "config", "message"), [
    pytest.param({"train": [_item(1), _item(2)], "test": [_item(2), _item(3)]}, {"training_split": "train"},
                 "task colors: 1 of the 2 documents of its train split 'train' are also in 'test', the split it is "
                 "evaluated on", id="shared-document"),
    pytest.param({"test": [_item(1), _item(2)]}, {"training_split": "test"},
                 "task colors: its train split 'test' is the split it is evaluated on", id="train-split-is-test-split"),
    pytest.param({"test": [_item(1), _item(2)]}, {},
                 "task colors: no train or validation documents to draw calibration examples from (--splits merged)",
                 id="no-pool"),
])
def test_a_task_whose_pool_is_not_apart_from_its_test_split_is_refused(tmp_path, splits, config, message):
    loaded = load_tasks(["colors"], include_path=[_write_task(tmp_path, "colors", splits, **config)])
    with pytest.raises(DataError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        task_examples("colors", loaded, TaskSplits.MERGED)


def test_select_calibrates_on_a_task_from_the_cli(tmp_path, store_dir, capsys):
    model = save_tiny_checkpoint(tmp_path / "model", store_dir)
    args = ["select", "--checkpoint", str(model), "--task", DOMAIN_TASK, "--data", str(store_dir), "--num-calib", "3",
            "--num-fewshot", "1", "--keep", "0.5", "--seq-len", "64", "--out", str(tmp_path / "sub"), "--no-progress"]
    assert main(args) == 0
    calibration = json.loads((tmp_path / "sub" / SELECTION_FILE).read_text())["calibration"]
    assert calibration["source"] == "task" and calibration["task"] == DOMAIN_TASK
    assert calibration["num_examples"] == 3 == calibration["num_windows"]
    assert calibration["sources"][DOMAIN_TASK]["calibration"] == ["train"]
    assert main([*args[:-3], "--calib", "code", "--out", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "emomoe select: error: --task: calibrates instead of --calib, and --selection needs no calibration; give one"
    )


def test_a_task_without_a_test_split_holds_its_validation_split_out(tmp_path):
    splits = {"validation": [_item(i) for i in range(4)], "train": [_item(9)]}
    folder = _write_task(tmp_path, "colors", splits, test_split=None, validation_split="validation",
                         training_split="train")
    examples = task_examples("colors", load_tasks(["colors"], include_path=[folder]), TaskSplits.MERGED)
    assert examples.info["sources"]["colors"]["held_out"] == "validation" and len(examples.calibration) == 1
    # No training split and no few-shot split named: lm-eval takes the demonstrations from the validation
    # split, which it evaluates on.
    folder = _write_task(tmp_path / "b", "colors", splits, test_split=None, validation_split="validation",
                         num_fewshot=2)
    loaded = load_tasks(["colors"], include_path=[folder])
    with pytest.raises(DataError, match="^task colors: its few-shot examples come from 'validation', the split"):
        task_examples("colors", loaded, TaskSplits.MERGED)


def test_a_group_pools_the_examples_of_its_tasks(store_dir, checkpoint_dir):
    from emomoe.data.tasks import TaskDataConfig
    from emomoe.evaluate.continuation import GROUP, task_name
    from emomoe.evaluate.shipped_tasks import ShippedTaskConfig
    from emomoe.experiments.task_data import load_task_examples

    shipped = ShippedTaskConfig(num_items=2, context_tokens=12, continuation_tokens=4)
    examples = load_task_examples(
        GROUP, TaskDataConfig(), seed=0, data=store_dir, checkpoint=checkpoint_dir, shipped=shipped
    )
    assert set(examples.info["sources"]) == {task_name(d) for d in ("code", "legal", "math")}
    assert len(examples.calibration) == 6 == len(examples.finetune)
    assert all(t.answer.startswith(" ") and t.prompt.strip() for t in examples.calibration)

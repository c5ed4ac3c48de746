"""`emomoe plan` end to end: the report, its flags, and the exit status."""

import pytest

from emomoe.cli import build_parser, main
from emomoe.train.plan import PlanConfig


def plan_parser():
    verbs = next(a for a in build_parser()._actions if a.dest == "verb")
    return verbs.choices["plan"]


def test_the_paper_recipe_on_128_gpus_with_activation_checkpointing(capsys):
    argv = ["plan", "--config", "emo-1b14b", "--gpus", "128", "--gpu-memory", "80GB",
            "--set", "train.activation_checkpointing=true"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("emo-1b14b: fsdp on 128 GPUs of 80.00 GB, bf16, micro-batch 4 x 4096 tokens\n")
    # 1024 sequences of 4096 tokens (spec section 6), and 6 x 13.6B / 128 bytes of the AdamW state.
    assert "global batch: 4,194,304 tokens (4 x 4096 x 2 micro-batches x 128 GPUs)" in out
    assert "  optimizer (AdamW moments)                     0.85 GB" in out
    assert "total with activation checkpointing" in out and "(the config's)" in out
    assert out.rstrip().endswith("fits: yes")


def test_flags_default_to_the_fields_of_plan_config():
    args = plan_parser().parse_args(["--config", "emo-1b14b"])
    help_text = " ".join(plan_parser().format_help().split())
    assert {k.removeprefix("config:"): v for k, v in vars(args).items() if k.startswith("config:")} == {}
    for flag in ("--gpus", "--gpu-memory", "--mfu", "--gpu-flops"):
        assert flag in help_text
    assert "(default: 80GB)" in help_text and "(default: 0.4; in (0, 1])" in help_text
    assert PlanConfig() == PlanConfig(gpus=8, gpu_memory="80GB", mfu=0.4, gpu_flops=None)


@pytest.mark.parametrize("gpus, status", [("1", 2), ("128", 0)])
def test_exit_status_says_whether_it_fits(gpus, status, capsys):
    # The standard baseline in float32 with checkpointing: far too big for one 80 GB GPU, roomy on 128.
    argv = ["plan", "--config", "std-1b14b", "--gpus", gpus, "--set", "train.precision=fp32",
            "--set", "train.activation_checkpointing=true"]
    assert main(argv) == status
    captured = capsys.readouterr()
    assert captured.out.rstrip().endswith("fits: no" if status else "fits: yes")
    assert captured.err.count("\n") == (1 if status else 0)

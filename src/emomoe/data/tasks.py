"""What every verb that reads lm-eval tasks is configured with (lm-eval, select --task, protocol):
one name, one default and one meaning for each. The tasks themselves are read in `experiments`,
the only place that imports lm-eval."""

from __future__ import annotations

import dataclasses
import enum

from emomoe.config import Config, ranged


class TaskSplits(enum.StrEnum):
    """Which of a task's documents calibrate a selection and fine-tune a subset. Either way the
    split the task is evaluated on (its test split, else its validation split) is held out."""

    MERGED = "merged"
    """Both from the training and validation documents together: the paper's "merged" splits."""
    SEPARATE = "separate"
    """Calibration from the validation documents, fine-tuning from the training documents."""


@dataclasses.dataclass
class TaskConfig(Config):
    include_path: list[str] = dataclasses.field(default_factory=list)
    """Folders of your own task YAMLs."""
    num_fewshot: int | None = ranged(None, ge=0)
    """Examples in each prompt; None means each task's own setting (0 if it has none)."""
    online: bool = False
    """Let lm-eval download task data; offline otherwise."""


@dataclasses.dataclass
class TaskDataConfig(TaskConfig):
    splits: TaskSplits = TaskSplits.MERGED
    """Where calibration and fine-tuning examples come from: merged (training and validation
    documents, the paper's) or separate (validation for calibration, training for fine-tuning)."""

"""The main job (`emomoe demo`, `make demo`): EMO against a standard MoE on the embedded corpus.

Steps, each cached in the output directory so that a second run reuses what is done:
1. data:  train an 8k byte-level BPE on the embedded corpus and write its token store;
2. train: configs/demo-emo.yaml and configs/demo-std.yaml on that store (same data order, seed
          and budget; they differ only in the router's pool), at once in a process each where the
          cores allow (`trains_side_by_side`); an interrupted run resumes;
3. eval:  per-domain validation loss of both final models over the whole validation split,
          written to OUT/val_loss.md (+ .json);
4. sweep: for every domain and keep fraction (1, 1/2, 1/4, 1/8 of the routed experts), select
          a subset on the domain's training documents (layerwise), slice it, and evaluate it on the
          domain's held-out documents, for both models; the other selection methods (global,
          easy-ep, reap, random) at 1/4 beside it; at 1/4 also a layerwise subset of the same bytes
          whose per-layer counts come from one ranking of every layer's experts (`select
          --budget-gb`); and how often `--selection auto` picks a held-out document's domain from
          its first 16, 32 and 64 tokens;
5. lm-eval: the shipped continuation task (pick the true continuation of a held-out passage
          among 4) through lm-evaluation-harness, per domain, for both models, full and with the
          sweep's 1/4 subset of that domain; OUT/lm_eval.md (+ .json);
6. report: OUT/report.md with the sweep's tables, the plot OUT/loss_vs_keep.png, the subsets'
          parameter counts and the lm-eval scores; the summary table is printed. It ends with the
          headline numbers and figures of the modularity analysis of both models (`emomoe analyze`
          on the held-out documents and the sweep's subsets), written in full to OUT/analysis.

With `anneal`, step 2 also trains configs/demo-anneal.yaml into OUT/anneal: the standard run
continued from its last checkpoint with its whole trainer state (AdamW moments, step, data
position) under EMO routing, for a fifth of its steps more, while the LR falls from the
checkpoint's to 0 (the paper's EMO-anneal, as OLMo-core ran it: `train.anneal_from`); steps 3
and 4 cover it beside the other two.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

from emomoe.analyze.analysis import ANALYSIS_FILE, AnalysisConfig, run_analysis, write_analysis
from emomoe.analyze.modularity_report import headline_table, summary_section
from emomoe.analyze.sweep_results import RESULTS_FILE, for_method, methods_of
from emomoe.checkpoint import load_for_inference
from emomoe.data.corpus import embedded_corpus
from emomoe.data.store import METADATA_FILE, TokenStore
from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import load_tokenizer, train_tokenizer
from emomoe.errors import ConfigError, EmomoeError, require
from emomoe.evaluate.continuation import (
    CONTEXT_TOKENS,
    CONTINUATION_TOKENS,
    GROUP,
    NUM_ITEMS,
    write_continuation_tasks,
)
from emomoe.evaluate.continuation import task_name as continuation_task
from emomoe.evaluate.loss import evaluate_checkpoint
from emomoe.experiments.benchmarks import go_offline, run_tasks, task_scores
from emomoe.experiments.eta import Eta, Stage
from emomoe.experiments.sweep import SELECTIONS_DIR, SweepConfig, keep_label, run_sweep, write_sweep
from emomoe.io import OUTPUT_MARKER, atomic_write_text, check_output_dir, mark_output, refuse_existing
from emomoe.select.methods import SelectMethod
from emomoe.select.routing import moe_layers
from emomoe.select.slicing import slice_model
from emomoe.tables import markdown_table
from emomoe.train.config import SHIPPED_CONFIGS, RunConfig
from emomoe.train.metrics import METRICS_FILE, read_metrics
from emomoe.train.rundir import CONFIG_FILE, first_difference, holds_run, remove_run
from emomoe.train.runtime import available_cores, setup_runtime
from emomoe.train.trainer import TrainResult, fit_to_store, train

ANALYSIS_DIR = "analysis"
TASKS_DIR = "lm_eval_tasks"
DEMO_MODELS = {"emo": "demo-emo.yaml", "std": "demo-std.yaml"}
ANNEAL, ANNEAL_CONFIG = "anneal", "demo-anneal.yaml"
TOKENIZER_VOCAB = 8192
BENCHMARK_KEEP = 0.25
"""The subset (fraction of routed experts kept) scored on the lm-eval task beside the full model,
the one every selection method is compared at, and the bytes at which per-layer counts meet the same
count in every layer."""
SWEEP_METHODS = [
    SelectMethod.LAYERWISE, SelectMethod.GLOBAL, SelectMethod.EASY_EP, SelectMethod.REAP, SelectMethod.RANDOM
]
"""The sweep's selection methods: layerwise (the paper's) at every fraction, the others at BENCHMARK_KEEP."""
BENCHMARK_TASK = {"num_items": NUM_ITEMS, "context_tokens": CONTEXT_TOKENS, "continuation_tokens": CONTINUATION_TOKENS}
"""Items per domain of the continuation task and their lengths: 7 x 32 x 4 choices of 80 tokens per model."""


@dataclasses.dataclass
class DemoResult:
    out: Path
    final_dirs: dict[str, Path]
    """Model name ("emo", "std") -> its final checkpoint directory."""
    val_loss: dict[str, dict[str, float]]
    """Model name -> domain (and "all") -> validation loss in nats per token."""
    table: str
    """Per-domain validation loss of both full models (markdown)."""
    sweep: dict[str, Any]
    """The keep-fraction sweep (see `emomoe.analyze.sweep_results`)."""
    benchmark: str
    """Accuracy on the lm-eval continuation task per domain, full models and subsets (markdown)."""
    report: Path
    modularity: str = ""
    """Headline numbers of the modularity analysis (markdown)."""


def run_demo(
    out: str | Path,
    overrides: list[str] | None = None,
    *,
    anneal: bool = False,
    force: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Run the main job into `out`; `overrides` (dotted key=value) apply to every model config."""
    out = Path(out)
    check_demo(out, overrides or [], anneal=anneal)
    # What a training run sets up for its process, for the steps after it (when the models train in
    # processes of their own, this one trains nothing).
    threads = demo_threads(overrides or [])
    setup_runtime(threads, retain_memory=True)
    side_by_side = trains_side_by_side(threads)
    eta = Eta(demo_stages(overrides or [], anneal=anneal, side_by_side=side_by_side))
    say = print if progress else (lambda *_: None)
    say(f"[1/6] data: tokenizer and token store of the embedded corpus in {out} ({eta.start('data')})")
    reused = (out / "store" / METADATA_FILE).is_file()
    store = prepare_demo_data(out, progress=progress)
    eta.finish(done=0.0 if reused else 1.0)
    final_dirs, training = {}, {}
    if side_by_side:
        configs = " and ".join(f"{config} -> {out / name}" for name, config in DEMO_MODELS.items())
        say(f"[2/6] train: {configs}, at once, a process each ({eta.start(SIDE_BY_SIDE)})")
        runs = train_side_by_side(store, out, overrides or [], force=force)
        eta.finish(done=_trained_share(*(run for run, _ in runs.values())))
        for name, (run, wall_s) in runs.items():
            say(f"      {name}: step {run.step} in {wall_s:.0f} s")
            final_dirs[name] = run.final_dir
            training[name] = training_facts(run.final_dir, wall_s)
    else:
        for name in DEMO_MODELS:
            say(f"[2/6] train: {DEMO_MODELS[name]} -> {out / name} ({eta.start(name)})")
            started = time.perf_counter()
            run = train_demo_model(name, store, out, overrides or [], force=force, progress=progress)
            eta.finish(done=_trained_share(run))
            final_dirs[name] = run.final_dir
            training[name] = training_facts(final_dirs[name], time.perf_counter() - started)
    if anneal:
        say(f"[2/6] train: {ANNEAL_CONFIG} from {final_dirs['std']} -> {out / ANNEAL} ({eta.start(ANNEAL)})")
        started = time.perf_counter()
        run = train_anneal_model(final_dirs["std"].parent, store, out, overrides or [], force=force, progress=progress)
        eta.finish(done=_trained_share(run))
        training[ANNEAL] = training_facts(run.final_dir, time.perf_counter() - started)
        # The standard MoE last: the sweep's tables compare every model with the last one.
        final_dirs = {"emo": final_dirs["emo"], ANNEAL: run.final_dir, "std": final_dirs["std"]}
    say(f"[3/6] eval: per-domain validation loss of the full models ({eta.start('eval')})")
    val_loss = {name: validation_losses(final, store, progress=progress) for name, final in final_dirs.items()}
    table = model_loss_table(val_loss)
    atomic_write_text(out / "val_loss.md", table + "\n")
    atomic_write_text(out / "val_loss.json", json.dumps(val_loss, indent=2) + "\n")
    say(f"[4/6] sweep: select, slice and evaluate expert subsets per domain and keep fraction ({eta.start('sweep')})")
    trained = RunConfig.from_yaml(out / "emo" / CONFIG_FILE)
    sweep_cfg = SweepConfig(
        seq_len=trained.data.seq_len, batch_size=trained.train.eval_batch_size, methods=SWEEP_METHODS,
        compare_keep=[BENCHMARK_KEEP], equal_bytes=[BENCHMARK_KEEP],
    )
    sweep = run_sweep(final_dirs, store, sweep_cfg, progress=progress)
    say(f"[5/6] lm-eval: the continuation task, full models and {BENCHMARK_KEEP:g} subsets ({eta.start('lm-eval')})")
    # The lm-eval and analysis steps stay with the two models the demo is about; the anneal is swept.
    pair = {name: final_dirs[name] for name in DEMO_MODELS}
    accuracy = benchmark_accuracy(pair, store, sweep, out)
    benchmark = benchmark_table(accuracy)
    atomic_write_text(out / "lm_eval.md", benchmark + "\n")
    atomic_write_text(out / "lm_eval.json", json.dumps(accuracy, indent=2) + "\n")
    command = f"emomoe demo --out {out}" + (" --anneal" if anneal else "")
    report = write_sweep(out, sweep, force=True, training=training, command=command)
    atomic_write_text(report, report.read_text() + "\n" + benchmark_section(benchmark))
    say(f"[6/6] analysis: which experts serve which domains -> {out / ANALYSIS_DIR} ({eta.start('analysis')})")
    modularity = analyze_demo_models(out, pair, store, report, progress=progress)
    say(f"done: {report}")
    return DemoResult(out, final_dirs, val_loss, table, sweep, benchmark, report, modularity)


REFERENCE_TOKENS_PER_S = 9500.0
"""Training speed of the demo's models on the reference machine (the 2-core Xeon the README's times
were measured on; 9,704 and 9,765 tokens/s with 2 threads, load about 2)."""
REFERENCE_SIDE_BY_SIDE_TOKENS_PER_S = 10400.0
"""The same, both models at once, a process and a core each: the tokens of both per second (11,265
and 9,583 in the runs beside those)."""
REFERENCE_S = {"data": 30.0, "eval": 8.0, "sweep": 45.0, "lm-eval": 10.0, "analysis": 10.0}
"""Seconds of each other stage on the reference machine: the tokenizer and store once; the others per model."""
SIDE_BY_SIDE = "emo+std"
"""The training stage of both demo models at once."""
METRICS_ONLY = ("train.peak_flops",)
"""Config fields that change what a run logs, not what it trains: a finished run is reused whatever they say."""


def demo_stages(overrides: list[str], *, anneal: bool, side_by_side: bool = False) -> list[Stage]:
    """The demo's stages in order, each with its time on the reference machine: what the ETA starts from."""
    models = [*DEMO_MODELS, *([ANNEAL] if anneal else [])]
    tokens = {}
    for name in models:
        cfg = RunConfig.from_yaml(SHIPPED_CONFIGS / {**DEMO_MODELS, ANNEAL: ANNEAL_CONFIG}[name], overrides)
        tokens[name] = cfg.train.max_steps * cfg.train.num_micro_batches * cfg.data.batch_size * cfg.data.seq_len
    trainings = [Stage(name, tokens[name] / REFERENCE_TOKENS_PER_S) for name in models]
    if side_by_side:
        together = sum(tokens[name] for name in DEMO_MODELS) / REFERENCE_SIDE_BY_SIDE_TOKENS_PER_S
        trainings = [Stage(SIDE_BY_SIDE, together), *trainings[len(DEMO_MODELS):]]
    per_model = {"eval": len(models), "sweep": len(models), "lm-eval": len(DEMO_MODELS), "analysis": len(DEMO_MODELS)}
    return [
        Stage("data", REFERENCE_S["data"]), *trainings,
        *(Stage(stage, REFERENCE_S[stage] * count) for stage, count in per_model.items()),
    ]


def _trained_share(*runs: TrainResult) -> float:
    """The share of the runs' steps this invocation trained (0 for runs finished earlier)."""
    return sum(run.step - run.first_step for run in runs) / max(sum(run.step for run in runs), 1)


def demo_threads(overrides: list[str]) -> int:
    """The demo models' train.num_threads (the larger, should they differ; 0: the adaptive default)."""
    return max(
        RunConfig.from_yaml(SHIPPED_CONFIGS / config, overrides).train.num_threads for config in DEMO_MODELS.values()
    )


def trains_side_by_side(threads: int) -> bool:
    """Whether the two demo models train at once, a process each: where the cores give each process
    its own (with a fixed train.num_threads, that many each). Two processes of one thread made 1.16
    and 0.98 times the tokens per second of one two-threaded process after the other (two
    measurements on 2 shared cores): no barrier waits between threads."""
    return available_cores() >= len(DEMO_MODELS) * max(threads, 1)


def train_side_by_side(
    store: TokenStore, out: Path, overrides: list[str], *, force: bool
) -> dict[str, tuple[TrainResult, float]]:
    """Step 2 with the cores for it: both demo models at once, each in a process of its own (spawned:
    a torch of its own), without progress bars (two would garble each other's lines). Model name ->
    its run and the seconds it took."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(DEMO_MODELS), mp_context=context) as pool:
        futures = {
            name: pool.submit(_train_in_process, name, store.path, out, overrides, force) for name in DEMO_MODELS
        }
        return {name: future.result() for name, future in futures.items()}


def _train_in_process(
    name: str, store_path: Path, out: Path, overrides: list[str], force: bool
) -> tuple[TrainResult, float]:
    started = time.perf_counter()
    # Both processes would measure the matmul peak at once, each slowed by the other: no MFU metric.
    overrides = [*overrides, "train.peak_flops=null"]
    try:
        run = train_demo_model(name, TokenStore.open(store_path), out, overrides, force=force, progress=False)
    except EmomoeError as e:
        # Back in the demo's process as the same one line (kinds with arguments of their own do not pickle).
        raise EmomoeError(str(e)) from None
    return run, time.perf_counter() - started


def check_demo(out: Path, overrides: list[str], *, anneal: bool) -> None:
    """Everything that can be checked before the first step (which takes minutes): the packages of
    the later steps, the overrides on every model's config, and that the outputs can be written
    (the folders the demo replaces as a whole must be its own)."""
    require("emomoe demo", "all", "lm_eval", "sklearn", "matplotlib")
    check_output_dir(out)
    for name in [*DEMO_MODELS, *([ANNEAL] if anneal else [])]:
        RunConfig.from_yaml(SHIPPED_CONFIGS / {**DEMO_MODELS, ANNEAL: ANNEAL_CONFIG}[name], overrides)
    # What a demo of an earlier version wrote, before folders carried a marker: the file it writes there.
    signatures = {TASKS_DIR: f"{GROUP}.yaml", ANALYSIS_DIR: ANALYSIS_FILE, SELECTIONS_DIR: f"../{RESULTS_FILE}"}
    for folder, signature in signatures.items():
        if (out / folder / signature).is_file() and not (out / folder / OUTPUT_MARKER).exists():
            mark_output(out / folder)
        refuse_existing(out / folder, force=True)


def analyze_demo_models(
    out: Path, final_dirs: dict[str, Path], store: TokenStore, report: Path, *, progress: bool
) -> str:
    """Step 6: the modularity analysis of both models into OUT/analysis (up to 64 held-out documents
    per domain, which is all of the embedded corpus's, cut to seq_len tokens; the sweep's subsets
    for their overlap), and its summary appended to report.md. Returns the headline table."""
    seq_len = RunConfig.from_yaml(out / "emo" / CONFIG_FILE).data.seq_len
    cfg = AnalysisConfig(tokens_per_doc=seq_len)
    analysis = run_analysis(final_dirs, store, cfg, sweep_dir=out, progress=progress)
    paths, names = " ".join(str(d) for d in final_dirs.values()), " ".join(final_dirs)
    command = (
        f"emomoe analyze --checkpoints {paths} --names {names} --data {store.path} "
        f"--tokens-per-doc {seq_len} --sweep {out} --out {out / ANALYSIS_DIR}"
    )
    write_analysis(out / ANALYSIS_DIR, analysis, command=command)
    atomic_write_text(report, report.read_text() + "\n" + summary_section(analysis, ANALYSIS_DIR))
    return headline_table(analysis)


def training_facts(final_dir: Path, wall_s: float) -> dict[str, Any]:
    """What the report says about a training run: its budget, how long this invocation took, and
    the thread counts it ran with (the adaptive default follows the machine's load; results
    differ in their last bits between thread counts, so a bit-exact rerun needs the same ones)."""
    cfg = RunConfig.from_yaml(final_dir.parent / CONFIG_FILE)
    records = read_metrics(final_dir.parent / METRICS_FILE)
    steps = records[-1]["step"] - records[0]["step"] + 1  # an anneal's own, after its checkpoint's
    tokens = steps * cfg.train.num_micro_batches * cfg.data.batch_size * cfg.data.seq_len
    threads = [r["threads"] for r in records if "threads" in r]
    low, high = (min(threads), max(threads)) if threads else ("n/a", "n/a")
    return {
        "steps": steps, "tokens": tokens, "wall s (this run)": round(wall_s, 1),
        "threads": str(low) if low == high else f"{low}-{high}",
    }


def prepare_demo_data(out: Path, *, held_out: str | None = None, progress: bool = True) -> TokenStore:
    """Step 1: the tokenizer (OUT/tokenizer) and token store (OUT/store), built once and reused; a
    `held_out` domain is in the store but not in the text the tokenizer is trained on."""
    store_dir, tokenizer_dir = out / "store", out / "tokenizer"
    if (store_dir / METADATA_FILE).is_file():
        return TokenStore.open(store_dir)
    if tokenizer_dir.is_dir():
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        texts = (d["text"] for d in embedded_corpus() if d["domain"] != held_out)
        tokenizer = train_tokenizer(texts, TOKENIZER_VOCAB, show_progress=progress)
        tokenizer.save(tokenizer_dir)
    return tokenize_corpus(embedded_corpus, tokenizer, store_dir, progress=progress)


def demo_config(name: str, store: TokenStore, overrides: list[str]) -> RunConfig:
    return RunConfig.from_yaml(SHIPPED_CONFIGS / {**DEMO_MODELS, ANNEAL: ANNEAL_CONFIG}[name]).with_overrides(
        [f"data.store={store.path}", *overrides]
    )


def train_demo_model(
    name: str, store: TokenStore, out: Path, overrides: list[str], *, force: bool, progress: bool
) -> TrainResult:
    """Step 2: train one model into OUT/<name>, resuming (or just reusing) an earlier run of the same config."""
    run_dir = out / name
    cfg = demo_config(name, store, overrides)
    if holds_run(run_dir):
        if force:
            remove_run(run_dir)
        else:
            stored = RunConfig.from_yaml(run_dir / CONFIG_FILE)
            difference = first_difference(stored.to_dict(), fit_to_store(cfg, store).to_dict(), skip=METRICS_ONLY)
            if difference:
                raise ConfigError(
                    f"{run_dir} holds a run with a different config (at '{difference}'); "
                    "pass --force to train it again"
                )
    return train(cfg, run_dir, resume=holds_run(run_dir), progress=progress)


ANNEAL_SHARE = 0.2
"""The anneal's steps over the standard run's (demo-anneal.yaml: 100 after 500; the paper: 50B
tokens after 1T, 5%)."""


def train_anneal_model(
    std_run: Path, store: TokenStore, out: Path, overrides: list[str], *, force: bool, progress: bool
) -> TrainResult:
    """Step 2, optional: EMO-anneal the standard run `std_run` into OUT/anneal (configs/demo-anneal.yaml
    from its last checkpoint), for `ANNEAL_SHARE` of its steps more, whatever `overrides` made them."""
    std_steps = RunConfig.from_yaml(std_run / CONFIG_FILE).train.max_steps
    length = [f"train.max_steps={std_steps + max(1, round(ANNEAL_SHARE * std_steps))}"]
    return train_demo_model(
        ANNEAL, store, out, [*overrides, f"train.anneal_from={std_run}", *length], force=force, progress=progress
    )


def validation_losses(final_dir: Path, store: TokenStore, *, progress: bool) -> dict[str, float]:
    """Step 3: CE per domain (and over all tokens) on the whole validation split."""
    cfg = RunConfig.from_yaml(final_dir.parent / CONFIG_FILE)
    result = evaluate_checkpoint(
        final_dir, store, seq_len=cfg.data.seq_len, batch_size=cfg.train.eval_batch_size, num_eval_windows=0,
        progress=progress,
    )
    losses = {domain: stats["loss"] for domain, stats in result["domains"].items()}
    return {**losses, "all": result["all"]["loss"]}


MODEL_TITLES = {"emo": "EMO", ANNEAL: "EMO-anneal", "std": "standard MoE"}


def model_loss_table(val_loss: dict[str, dict[str, Any]]) -> str:
    """Step 3: domains as rows (then "all" tokens, and the unweighted mean over domains), one loss
    column per model, and every other model minus the standard one."""
    others = [m for m in val_loss if m != "std"]
    with_mean = {
        m: {**losses, "mean over domains": statistics.fmean(v for d, v in losses.items() if d != "all")}
        for m, losses in val_loss.items()
    }
    std = with_mean["std"]
    rows = [
        [domain, *[f"{with_mean[m][domain]:.3f}" for m in with_mean],
         *[f"{with_mean[m][domain] - std[domain]:+.3f}" for m in others]]
        for domain in std
    ]
    titles = [MODEL_TITLES.get(m, m) for m in with_mean]
    return markdown_table(["domain", *titles, *[f"{MODEL_TITLES.get(m, m)} - std" for m in others]], rows)


def benchmark_accuracy(
    final_dirs: dict[str, Path], store: TokenStore, sweep: dict[str, Any], out: Path
) -> dict[str, dict[str, dict[str, float]]]:
    """Step 5: model -> "full" or the keep label -> domain -> accuracy on the continuation task.

    The subset of each domain is the one the sweep selected on that domain's training documents
    (with its first method); the task's items come from the domain's held-out documents
    (OUT/lm_eval_tasks).
    """
    go_offline()
    from emomoe.experiments.harness import EmoLM  # imports lm-eval: only now, and offline

    task_dir = out / TASKS_DIR
    tasks = write_continuation_tasks(store, task_dir, **BENCHMARK_TASK)
    tokenizer = load_tokenizer(store.tokenizer_path)
    keep = keep_label(BENCHMARK_KEEP)
    kept_experts = for_method(sweep, methods_of(sweep)[0])["kept_experts"]
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    for name, final in final_dirs.items():
        model, cfg = load_for_inference(final)
        layers = moe_layers(cfg, where=str(final))
        per_model = accuracy[name] = {"full": {}, keep: {}}
        for domain in store.domains:
            task = continuation_task(domain)
            if task not in tasks:
                continue  # too few long held-out documents: left out, and said
            subset, _ = slice_model(model, cfg, layers, kept_experts[name][keep][domain])
            for label, variant in (("full", model), (keep, subset)):
                lm = EmoLM(model=variant, tokenizer=tokenizer)
                scores = task_scores(run_tasks(lm, [task], include_path=[task_dir]))
                per_model[label][domain] = scores[task]["acc"]
    return accuracy


def benchmark_table(accuracy: dict[str, dict[str, dict[str, float]]]) -> str:
    """Domains as rows; a column per (model, full or subset); the mean over domains last."""
    columns = [(name, label) for name, per_model in accuracy.items() for label in per_model]
    domains = list(next(iter(accuracy.values()))["full"])
    rows = [[d, *(f"{accuracy[n][k][d]:.3f}" for n, k in columns)] for d in domains]
    means = [sum(accuracy[n][k].values()) / len(domains) for n, k in columns]
    rows.append(["mean", *(f"{m:.3f}" for m in means)])
    return markdown_table(["domain", *(f"{n} {k}" for n, k in columns)], rows)


def benchmark_section(table: str) -> str:
    items = BENCHMARK_TASK["num_items"]
    return (
        "## lm-eval: pick the true continuation (4 choices, chance 0.25)\n\n"
        f"Accuracy on `emomoe_continuation_<domain>` ({items} items per domain from held-out documents, "
        f"through lm-evaluation-harness); `{keep_label(BENCHMARK_KEEP)}` is the domain's own subset from the "
        f"sweep. Reproduce one cell with `emomoe lm-eval --checkpoint CKPT --tasks emomoe_continuation`.\n\n"
        + table + "\n"
    )

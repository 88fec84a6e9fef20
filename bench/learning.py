"""Learning benchmark on the demo dataset: validation macro-F1 against training steps, end-to-end and two-stage.

It converts the embedded demo dataset with the demo's own flags (``affectstream.demo.DEMO_CONVERT_FLAGS``),
then trains with the demo's training flags (``DEMO_TRAIN_FLAGS``). Each job scores every ``--eval_every`` steps
on the split it selects its best epoch on (by default the conversion's ``selection`` split, held out of the train
subjects: the curve, and ``curve_split`` in ``learning.json``), and its final figure (``final_macro_f1``) is the
selected epoch's on the whole validation split (every labelled frame):

* ``constant``: one end-to-end job at ``--learning_rate`` for the largest budget: its per-epoch scores are
  the score-vs-steps curve of a constant learning rate;
* ``cosine``: one end-to-end job per budget, ``--lr_schedule cosine`` at ``--cosine_learning_rate`` with
  ``--warmup_steps`` (a cosine job's curve depends on its budget, so each budget is its own job);
* ``two_stage``: ``--stage frames`` for each budget's CNN steps (``--frames_batch_size`` frames a step, as many
  as an end-to-end step's ``batch x seq_len``), then ``--stage sequence`` for ``--sequence_steps`` steps on
  the frozen CNN's features, once per temporal head of ``--heads`` (the first one, ``gru`` by default, is the
  demo's). With a budget of ``DEMO_CNN_STEPS`` and ``--eval_every DEMO_STEPS_PER_EPOCH`` and the GRU this is the
  demo's own training (:func:`affectstream.demo.train_two_stage`);
* ``features``: ``--stage sequence --features_from EXPORT`` (``--feature_layer``) for ``--sequence_steps`` steps, once
  per head of ``--heads``: a temporal head on the frozen features of a pretrained model (e.g. an imported one,
  docs/pretrained.md), no CNN trained here.

Every job's wall time (start-up, evaluations and export included), its CPU time (all of its threads) and
its training steps per second are recorded with the machine's load average, so times measured on a busy
machine can be judged honestly. ``--seed`` overrides the demo's seed (a second seed shows the run-to-run
spread).
Writes ``learning.json`` and ``learning.png`` (score vs steps) into ``--out``::

    .venv/bin/python bench/learning.py --out /tmp/learning --budgets 300,800
    .venv/bin/python bench/learning.py --data /tmp/demo_records --configs cosine --budgets 500
    .venv/bin/python bench/learning.py --out /tmp/plot --configs "" --add_job demo=demo_output/job
    .venv/bin/python bench/learning.py --out /tmp/heads --configs two_stage,features --budgets 300 \
        --heads gru,tcn,transformer --features_from models/fer
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import logging
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = ("constant", "cosine", "two_stage", "features")


def chosen_configs(value: str | None, features_from: str | None) -> list[str]:
    """The configs to run: ``--configs`` (comma-separated), or by default every one (``features`` only when
    ``--features_from`` names the export it needs)."""
    if value is None:
        return [c for c in CONFIGS if c != "features" or features_from]
    configs = [c for c in value.split(",") if c]
    if set(configs) - set(CONFIGS):
        raise ValueError(f"--configs: unknown {sorted(set(configs) - set(CONFIGS))}; choose from {', '.join(CONFIGS)}")
    if "features" in configs and not features_from:
        raise ValueError("--configs features needs --features_from EXPORT")
    return configs


class _RateLog(logging.Handler):
    """Collects the trainer's logged training rates (``(x steps/s)``) of one job."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.rates: list[float] = []

    def emit(self, record):
        match = re.search(r"\(([\d.]+) steps/s\)", record.getMessage())
        if match:
            self.rates.append(float(match.group(1)))


def _evaluation_events(job_dir: str) -> list[tuple[str, str]]:
    """``(run, events file)`` of the job's TensorBoard runs that score epochs (every run but ``train``: the split
    the job selects its best epoch on)."""
    from trainer.training.job_files import LOGS_DIRNAME

    found = []
    for path in glob.glob(os.path.join(job_dir, LOGS_DIRNAME, "*", "events.out.tfevents.*")):
        run = os.path.basename(os.path.dirname(path))
        if run != "train":
            found.append((run, path))
    return found


def curve_split(job_dir: str) -> str:
    """The split the per-epoch scores of :func:`epoch_scores` are on (the one the job selects its best epoch on)."""
    return ",".join(sorted({run for run, _ in _evaluation_events(job_dir)}))


def epoch_scores(job_dir: str) -> dict[int, float]:
    """``{step: selection score}`` of every evaluated epoch, read from the job's TensorBoard events."""
    import tensorflow as tf

    from trainer.evaluation.tensorboard import TAG_SCORE

    scores = {}
    for _, path in _evaluation_events(job_dir):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == TAG_SCORE:
                    scores[int(event.step)] = float(tf.make_ndarray(value.tensor))
    return scores


def run_job(name: str, args: list[str], steps_per_epoch: int) -> dict:
    """Runs one training job in this process; returns its scores, wall time, rates and the load average."""
    from trainer import train

    handler = _RateLog()
    logger = logging.getLogger("trainer.train")
    logger.setLevel(logging.INFO)  # the step lines carry the rates
    logger.addHandler(handler)
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = train.run(args)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    logger.removeHandler(handler)
    if rc != 0:
        raise SystemExit(f"job {name} failed with exit code {rc}")
    job_dir = args[args.index("--job_dir") + 1]
    with open(os.path.join(job_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    scores = epoch_scores(job_dir)
    # The first logged rate includes tracing and the input pipeline's start: leave it out.
    rates = handler.rates[1:] or handler.rates
    result = {"name": name, "curve": {str(epoch * steps_per_epoch): s for epoch, s in sorted(scores.items())},
              "curve_split": curve_split(job_dir), "final_macro_f1": metrics["expression"]["macro_f1"],
              "best_epoch": metrics["best_epoch"],
              "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "steps_per_s": round(sum(rates) / len(rates), 3) if rates else None,
              "load_average": round((load_before + os.getloadavg()[0]) / 2, 2), "args": args}
    print(json.dumps({k: v for k, v in result.items() if k != "args"}), flush=True)
    return result


def existing_job(name: str, job_dir: str) -> dict:
    """The curve of a job trained elsewhere (the demo's ``job/``, or one stopped early), for the plot.

    Its final score is the last evaluated epoch's when the job never wrote ``metrics.json``.
    """
    with open(os.path.join(job_dir, "train_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    scores = epoch_scores(job_dir)
    if not scores:
        raise SystemExit(f"{job_dir}: no evaluated epoch in its TensorBoard logs")
    metrics_path = os.path.join(job_dir, "metrics.json")
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            final = json.load(f)["expression"]["macro_f1"]
    else:
        final = scores[max(scores)]
    steps = config["steps_per_epoch"]
    result = {"name": name, "curve": {str(epoch * steps): s for epoch, s in sorted(scores.items())},
              "curve_split": curve_split(job_dir), "final_macro_f1": final, "epochs_done": len(scores),
              "epochs": config["epochs"],
              "learning_rate": config["learning_rate"], "lr_schedule": config.get("lr_schedule"), "job_dir": job_dir}
    source = config.get("features_from") or config.get("init_from")
    if config.get("stage") == "sequence":  # plotted at the CNN steps of the frames job it started from
        from trainer.model.export import MODEL_INFO_FILENAME, resolve_model_dir

        with open(os.path.join(resolve_model_dir(source), MODEL_INFO_FILENAME), encoding="utf-8") as f:
            frames = json.load(f).get("train_config")
        result["sequence_steps"] = config["epochs"] * steps
        if frames is None:  # an imported model's features: no CNN trained here
            result.update({"features_from": source, "feature_layer": config.get("feature_layer")})
        else:
            result["cnn_steps"] = frames["epochs"] * frames["steps_per_epoch"]
    return result


def convert_demo(work: str) -> str:
    """Generates and converts the demo dataset with the demo's flags; returns the records folder."""
    from affectstream import demo, demo_data
    from beam_jobs import convert

    made = demo_data.make_demo_dataset(os.path.join(work, "source"))
    records = os.path.join(work, "records")
    rc = convert.run(["--dataset", "abaw", "--videos", made["videos"], "--annotations", made["annotations"],
                      "--output", records, *demo.DEMO_CONVERT_FLAGS, "--runner", "DirectRunner",
                      "--direct_running_mode", "in_memory", "--progress_every", "0"])
    if rc != 0:
        raise SystemExit(f"conversion failed with exit code {rc}")
    return records


def _flag(flags, name: str) -> int:
    return int(flags[list(flags).index(name) + 1])


def plot(results: list[dict], path: str) -> None:
    """Score vs steps of every job (two-stage jobs at their CNN steps) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    beside = len(results) > 7  # (a long legend inside the axes hides curves)
    fig, ax = plt.subplots(figsize=(10, 4.2) if beside else (7, 4.2))
    for r in results:
        steps = [int(s) for s in r["curve"]]
        if r.get("features_from"):  # a head on a pretrained model's features: its curve over its own steps
            ax.plot(steps, list(r["curve"].values()), "x--", label=r["name"])
        elif "cnn_steps" in r:  # a two-stage job: one point, its final score at the CNN's steps
            ax.plot([r["cnn_steps"]], [r["final_macro_f1"]], "s", label=f"{r['name']} (+{r['sequence_steps']} "
                    f"head steps on its features)")
        elif steps:
            ax.plot(steps, list(r["curve"].values()), "o-", label=r["name"])
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training steps (CNN steps for two-stage; head steps on pretrained features)")
    splits = sorted({r["curve_split"] for r in results if r.get("curve_split")}) or ["validation"]
    ax.set_ylabel(f"macro-F1: curves on {', '.join(splits)},\ntwo-stage points on validation", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("Demo dataset, 8 expression classes (chance ~0.125)")
    if beside:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    from affectstream import demo

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for learning.json, learning.png and the jobs")
    p.add_argument("--data", help="an existing conversion of the demo dataset (default: convert it into --out)")
    p.add_argument("--configs", default=None, help=f"comma-separated, of {', '.join(CONFIGS)} (default: every one, "
                   "features only with --features_from)")
    p.add_argument("--budgets", default=f"{demo.DEMO_CNN_STEPS},800",
                   help="training steps of the jobs (comma-separated; the demo's CNN: its first default)")
    p.add_argument("--eval_every", type=int, default=demo.DEMO_STEPS_PER_EPOCH,
                   help="steps per epoch (one evaluation each; default: the demo's)")
    p.add_argument("--learning_rate", type=float, default=0.001, help="of the constant job (the demo's)")
    p.add_argument("--cosine_learning_rate", type=float, default=0.003)
    p.add_argument("--warmup_steps", type=int, default=50)
    p.add_argument("--frames_batch_size", type=int, default=demo.DEMO_FRAMES_BATCH_SIZE)
    p.add_argument("--sequence_steps", type=int, default=demo.DEMO_RNN_STEPS)
    p.add_argument("--heads", default="gru", help="temporal heads of the sequence jobs (comma-separated, of gru, lstm, "
                   "tcn, transformer)")
    p.add_argument("--features_from", help="the features config: the export whose frozen features the heads train on")
    p.add_argument("--feature_layer", help="with --features_from: the layer cut (default: the features its heads read)")
    p.add_argument("--seed", type=int, default=None, help="instead of the demo's --seed")
    p.add_argument("--add_job", action="append", default=[], metavar="NAME=JOB_DIR",
                   help="also plot a job trained elsewhere (e.g. a demo's job/); with --configs '' only replots")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        configs = chosen_configs(args.configs, args.features_from)
    except ValueError as e:
        p.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    heads = [h for h in args.heads.split(",") if h]
    data = args.data or (convert_demo(args.out) if configs else None)
    budgets = sorted(int(b) for b in args.budgets.split(","))
    train_flags = list(demo.DEMO_TRAIN_FLAGS)
    if args.seed is not None:
        train_flags[train_flags.index("--seed") + 1] = str(args.seed)
    every = args.eval_every

    def job(name, steps, *extra):
        epochs = max(1, steps // every)
        return ["--data", data, "--job_dir", os.path.join(args.out, name), "--epochs", str(epochs),
                "--steps_per_epoch", str(every), "--log_every", str(every), *train_flags, *extra]

    results = [existing_job(*spec.split("=", 1)) for spec in args.add_job]
    if "constant" in configs:
        results.append(run_job(f"constant_lr{args.learning_rate:g}",
                               job(f"constant_{budgets[-1]}", budgets[-1], "--learning_rate", str(args.learning_rate)),
                               every))
    for steps in budgets:
        if "cosine" in configs:
            results.append(run_job(f"cosine_lr{args.cosine_learning_rate:g}_{steps}", job(
                f"cosine_{steps}", steps, "--learning_rate", str(args.cosine_learning_rate), "--lr_schedule",
                "cosine", "--warmup_steps", str(args.warmup_steps)), every))
        if "two_stage" in configs:
            frames_dir = os.path.join(args.out, f"frames_{steps}")
            frames = run_job(f"frames_{steps}", job(f"frames_{steps}", steps, "--stage", "frames",
                                                    "--batch_size", str(args.frames_batch_size)), every)
            results.append(frames)
            for head in heads:
                name = f"{steps}" if head == "gru" else f"{head}_{steps}"
                sequence = run_job(f"two_stage_{name}", job(
                    f"sequence_{name}", args.sequence_steps, "--stage", "sequence", "--features_from", frames_dir,
                    "--temporal", head), every)
                sequence.update({"cnn_steps": steps, "sequence_steps": args.sequence_steps, "temporal": head,
                                 "frames_macro_f1": frames["final_macro_f1"],
                                 "wall_s_both": round(frames["wall_s"] + sequence["wall_s"], 1)})
                results.append(sequence)
    if "features" in configs:
        cut = ["--feature_layer", args.feature_layer] if args.feature_layer else []
        for head in heads:
            name = f"features_{head}" + (f"_{args.feature_layer}" if args.feature_layer else "")
            features = run_job(name, job(name, args.sequence_steps, "--stage", "sequence", "--features_from",
                                         args.features_from, *cut, "--temporal", head), every)
            features.update({"features_from": args.features_from, "feature_layer": args.feature_layer,
                             "temporal": head, "sequence_steps": args.sequence_steps})
            results.append(features)
    summary = {"data": data, "demo_train_flags": train_flags, "eval_every": every, "heads": heads,
               "frames_per_step": _flag(train_flags, "--batch_size") * _flag(train_flags, "--seq_len"),
               "cpu_count": os.cpu_count(), "results": results}
    with open(os.path.join(args.out, "learning.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    plot(results, os.path.join(args.out, "learning.png"))
    print(f"wrote {os.path.join(args.out, 'learning.json')} and learning.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

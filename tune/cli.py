"""``boxtune``: the command line.

User errors (``BoxtuneError``: a bad config key, a bad file) print one line and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from trainables.errors import BoxtuneError, ConfigError, DataError
from tune.run import layout

__all__ = ["main", "build_parser"]


def _cmd_data_summary(args: argparse.Namespace) -> int:
    manifest_file = str(args.path).endswith(".parquet")
    for flag, path in (("", args.path), ("--val-path ", args.val_path), ("--test-path ", args.test_path)):
        if path is not None and not Path(path).expanduser().exists():
            raise DataError(f"{flag}{path}: {'manifest' if manifest_file and not flag else 'dataset'} not found")
    if args.images_dir is not None and not Path(args.images_dir).expanduser().is_dir():
        raise DataError(f"--images-dir {args.images_dir}: no such folder")
    from trainables.data import SUMMARY_FLAGS, build_manifest, read_manifest, summarize

    if manifest_file:
        manifest = read_manifest(args.path)
    else:
        manifest = build_manifest(args.path, format=args.format, images_dir=args.images_dir,
                                  val_source=args.val_path, val_fraction=args.val_fraction,
                                  test_source=args.test_path, test_fraction=args.test_fraction,
                                  seed=args.seed, strict=args.strict, names=SUMMARY_FLAGS)
    print(summarize(manifest))
    if args.manifest:
        manifest.write(args.manifest)
        print(f"manifest written to {args.manifest}")
    return 0


def _cmd_data_demo(args: argparse.Namespace) -> int:
    from trainables.data import make_demo_dataset

    path = make_demo_dataset(args.out, num_images=args.num_images, image_size=args.image_size, seed=args.seed)
    print(f"demo dataset written: {path}")
    return 0


def _check_run(run: str, *, train: bool = True) -> None:
    """A local run folder that is not there, or holds neither a sweep nor a train run, is one line
    before anything loads (a URI is the storage's to answer)."""
    if "://" in run and not run.startswith("file://"):
        return
    path = Path(run.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{run}: no such folder" if not path.exists() else f"{run}: a file, not a run folder")
    if (path / layout.SWEEP_FILE).is_file() or (train and (path / layout.METRICS_FILE).is_file()):
        return
    kinds = f"a boxtune sweep folder (no {layout.SWEEP_FILE})"
    if train:
        kinds = f"a boxtune sweep or train folder (no {layout.SWEEP_FILE} or {layout.METRICS_FILE})"
    raise ConfigError(f"{run}: not {kinds}")


def _check_file(path: str, what: str) -> None:
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"{path}: no such {what}" if not Path(path).exists() else f"{path}: a folder, not a {what}")


def _is_train_folder(run: str) -> bool:
    return "://" not in run and (Path(run) / layout.METRICS_FILE).is_file() and not (Path(run) / layout.SWEEP_FILE).is_file()


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be 1 or more")
    return number


def _check_device(value: str | None) -> None:
    """``--device``, before any work: a device this machine does not have is a user error, not a traceback."""
    if value is None:
        return  # cuda if available, else cpu
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        raise BoxtuneError(f"--device {value!r}: not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BoxtuneError(f"--device {value}: torch sees no CUDA device on this machine "
                               f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
                               f"use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise BoxtuneError(f"--device {value}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                               f"(cuda:0 to cuda:{count - 1})")
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        if backend is None or not backend.is_available():
            raise BoxtuneError(f"--device {value}: torch has no {device.type} device on this machine; use cpu or cuda")


def _train_threads(flag: int | None, configured: int | None) -> tuple[int, str]:
    """torch threads for ``boxtune train`` and where the count came from: ``--threads``, the config's
    ``threads``, else every CPU this process may use (its affinity, not the machine's count)."""
    if flag is not None:
        return flag, "--threads"
    if configured is not None:
        return configured, "the config's threads"
    return len(os.sched_getaffinity(0)), "the CPUs this process may use"


def _cmd_train(args: argparse.Namespace) -> int:
    from tune.config import TrainConfig, load_config

    # --epochs is --set training.epochs=N: a best-config from `report --best-config` becomes a longer run
    overrides = list(args.set) + ([f"training.epochs={args.epochs}"] if args.epochs is not None else [])
    cfg = load_config(args.config, TrainConfig, overrides=overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file; give a folder")
    fraction = args.gpu_memory_fraction
    if fraction is None:
        fraction = _env_float("BOXTUNE_GPU_MEMORY_FRACTION")
    threads, source = _train_threads(args.threads, cfg.threads)
    _check_device(args.device)
    from trainables.config import parse_trial_config
    from trainables.loop import TrialResources, run_trial
    from trainables.model import cache_weights, check_model
    from trainables.objective import parse_objective
    from trainables.reporting import LocalReporter, format_best_summary
    from tune.launch.data_source import (
        prepare_manifest,  # not tune.launch.sweep: a trial needs neither Ray nor Optuna
    )
    from tune.run.folder import TrainFolder
    from tune.trial_config import train_trial_config

    resources = TrialResources(cpus=threads, device=args.device, gpu_memory_fraction=fraction)
    manifest = prepare_manifest(cfg)
    n_test = len(manifest.records("test"))
    print(f"{len(manifest.records('train'))} train / {len(manifest.records('val'))} val"
          f"{f' / {n_test} test' if n_test else ''} images, classes: {', '.join(manifest.class_names)}; output in {out}")
    trial_cfg = train_trial_config(cfg)
    # before --out is made, on the model section the trial builds (by_architecture applied): a
    # class_map typo or a missing file is one line; a weights name is downloaded once, or one line
    # says where to put the file
    model_cfg = parse_trial_config(trial_cfg).model
    check_model(model_cfg, manifest.class_names)
    cache_weights(model_cfg)
    reporter = LocalReporter(out, echo=lambda line: print(line, flush=True))
    if reporter.latest_checkpoint() is not None and not args.resume:
        raise BoxtuneError(f"{out} already holds checkpoints; pass --resume to continue, or choose another --out")
    # CPU float sums depend on the thread count, and with them the weights and AP: say it, and record it
    print(f"torch threads: {threads} ({source}); AP depends on the count, so compare runs made with the same")
    folder = TrainFolder(out)
    folder.write_info({"threads": threads, "threads_from": source, "device": str(resources.resolve_device()),
                       "metric": parse_objective(cfg.metric, key="metric").label, "epochs": cfg.training.epochs})
    folder.write_manifest(manifest)  # the val split the best epoch's interval is computed on (report, export)
    run_trial(trial_cfg, manifest=manifest, reporter=reporter,
              resources=resources)
    print(format_best_summary(out, epochs=cfg.training.epochs))
    _train_test_summary(out, manifest, device=args.device)
    return 0


def _train_test_summary(out: Path, manifest, *, device: str | None) -> None:
    """Evaluate the best epoch once on the test split (if any) and print its numbers beside val's."""
    from tune.results.holdout import OPTIMISTIC_TRAIN_NOTE, evaluate_train_on_test
    from tune.run.folder import TrainFolder

    test = evaluate_train_on_test(out, manifest, device=device)
    if test is None:
        print(OPTIMISTIC_TRAIN_NOTE)
        return
    m = test["metrics"]
    print(f"test split ({test['images']} images), epoch {test['epoch']}: "
          + "  ".join(f"test_{k} {m[k]:.4f}" for k in ("AP", "AP50", "AP75", "AR100"))
          + f"  (in {TrainFolder(out).test_results_path()})")


def _prepare_ray(address: str | None) -> None:
    """``sweep``, ``demo`` and ``resume``, before any work: without an address they start a local Ray,
    confined to loopback before anything imports ray (Ray reads the switch once, at import); with one,
    an address where no Ray cluster answers fails now, not after the dataset is read."""
    from tune.launch.ray_session import check_address, confine_local_ray, is_local

    if is_local(address):
        confine_local_ray()
    else:
        check_address(address or os.environ["RAY_ADDRESS"])


def _cmd_sweep(args: argparse.Namespace) -> int:
    _check_file(args.config, "config file")
    _prepare_ray(args.address)
    from tune.config import SweepConfig, load_config
    from tune.results.report import sweep_summary
    from tune.workflow import sweep

    # quoted: an override's value is YAML, where a bare off, no or 123 would not be a name
    overrides = list(args.set) + ([f"name={json.dumps(args.name)}"] if args.name else [])
    cfg = load_config(args.config, SweepConfig, overrides=overrides)
    result = sweep(cfg, address=args.address)
    print(sweep_summary(result.view, result.rows, top=args.top))
    return _failed_sweep_status(result.rows)


def _failed_sweep_status(rows) -> int:
    """1 when no trial finished (every one errored, each listed with its error above), else 0."""
    if not rows or any(r["status"] != "ERROR" for r in rows):
        return 0
    what = f"all {len(rows)} trials" if len(rows) > 1 else "the one trial"
    print(f"boxtune: error: {what} failed; trial {rows[0]['trial']}: {rows[0].get('error') or 'see its error.txt'}",
          file=sys.stderr)
    return 1


def _cmd_resume(args: argparse.Namespace) -> int:
    _check_run(args.run, train=False)
    _prepare_ray(args.address)
    from tune.results.report import sweep_summary
    from tune.workflow import resume

    result = resume(args.run, address=args.address)
    print(sweep_summary(result.view, result.rows))
    return _failed_sweep_status(result.rows)


def _cmd_report(args: argparse.Namespace) -> int:
    _check_run(args.run)
    if _is_train_folder(args.run):
        from tune.results.train_report import format_train_report

        for flag, given in (("--best-config", args.best_config), ("--trial", args.trial), ("--plot", args.plot),
                            ("--per-class", args.per_class), ("--html", args.html)):
            if given:
                raise BoxtuneError(f"{flag}: {args.run} is a boxtune train folder; {flag} reads a sweep folder")
        _write_report(format_train_report(args.run, fmt=args.format), args.output)
        return 0
    from tune.results.report import (
        format_per_class,
        format_ranking,
        param_importances,
        per_class_rows,
        sweep_notes,
    )
    from tune.run import load_sweep, rank_trials

    view = load_sweep(args.run)
    rows = rank_trials(view)
    importances = param_importances(view)
    out = format_ranking(rows, fmt=args.format, top=args.top, importances=importances,
                         notes=sweep_notes(view), wide=args.wide)
    if args.per_class:
        # per-class AP/AR100 of the top trials' best epochs (--top, default the best one)
        lines = per_class_rows(view, rows, top=args.top or 1)
        if args.format == "table":
            out = f"{out}\n\nper class (val; test_* where evaluated on the test split):\n{format_per_class(lines)}"
        else:
            out = format_ranking(lines, fmt=args.format)
    if args.plot:
        from tune.results.plots import write_plots

        for path in write_plots(view, rows, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    if args.html:
        from tune.results.html_report import write_html_report

        print(f"wrote {write_html_report(view, rows, args.html, importances=importances)}", file=sys.stderr)
    if args.best_config:
        from tune.results.best_config import write_best_config

        path = write_best_config(view, args.best_config, trial=args.trial)
        print(f"wrote {path}: boxtune train {path} --out DIR reproduces the trial; add --epochs N for a longer run",
              file=sys.stderr)
    elif args.trial:
        raise BoxtuneError("--trial goes with --best-config")
    _write_report(out, args.output)
    return 0


def _write_report(out: str | bytes, output: str | None) -> None:
    """A report to ``--output`` (parquet bytes need one), else to stdout."""
    if isinstance(out, bytes):
        if output is None:
            raise BoxtuneError("--format parquet needs --output FILE")
        Path(output).write_bytes(out)
    elif output:
        Path(output).write_text(out + "\n")
    else:
        print(out)


def _peak_gpu_mib(history: list[dict]) -> float | None:
    """The most GPU memory a trial's allocator held in any epoch (MiB), or None for a CPU trial."""
    import math

    values = [float(m["gpu_reserved_mib"]) for m in history if m.get("gpu_reserved_mib") is not None]
    values = [v for v in values if math.isfinite(v)]  # a result table fills epochs without it with NaN
    return max(values) if values else None


def _cmd_status(args: argparse.Namespace) -> int:
    _check_run(args.run, train=False)
    from tune.run import load_sweep, rank_trials
    from tune.run.front import eligible

    view = load_sweep(args.run)
    # trials whose node the driver saw lost, and that have not reported from another node since
    lost = {entry["trial"]: entry for entry in view.open_node_losses()}
    counts: dict[str, int] = {}
    for t in view.trials:
        # Tune's state snapshot records running trials as PENDING (so a restore restarts them);
        # a trial that has reported epochs has started
        status = "LOST" if t.trial_id in lost else "RUNNING" if t.status == "PENDING" and t.history else t.status
        counts[status] = counts.get(status, 0) + 1
    not_started = max(0, view.num_trials - len(view.trials))
    print(f"sweep {view.uri}")
    print(f"  trials: {view.num_trials} asked, {counts.get('TERMINATED', 0)} done, {counts.get('RUNNING', 0)} running, "
          f"{counts.get('PENDING', 0) + not_started} pending, {counts.get('ERROR', 0)} errored"
          # scheduler.name halving: a trial held until its batch has reached the rung
          + (f", {counts['PAUSED']} waiting at a rung" if counts.get("PAUSED") else "")
          + (f", {counts['LOST']} lost {'its' if counts['LOST'] == 1 else 'their'} node" if counts.get("LOST") else ""))
    if lost:
        import time

        from tune.launch.node_loss import short_id

        told = []
        for trial_id, e in lost.items():
            retries = "" if e.get("retries", -1) < 0 else f" of {e['retries']}"
            then = ("no retries left" if e.get("retry") is None else "retry pending" if not e["retry"]
                    else f"retry {e['retry']}{retries} pending")
            told.append(f"{trial_id} (node {short_id(e['node_id'])}, {e.get('node_ip') or '?'}, "
                        f"lost {time.time() - e['at']:.0f} s ago; {then})")
        print(f"  {len(told)} trial{' lost its' if len(told) == 1 else 's lost their'} node: " + ", ".join(told))
    if view.confirm is not None:  # search.confirm: the top configs on new seeds
        done = sum(t.status == "TERMINATED" for t in view.confirm.trials)
        print(f"  confirmation stage: {view.confirm.num_trials} seeds asked, {done} done")
    rows = [r for r in rank_trials(view, intervals=False) if r["best_epoch"]]
    if rows and not eligible(rows[0]):  # infeasible rows rank last: none is within the limits
        print(f"  best so far: none within search.constraints ({len(rows)} trial{'s' if len(rows) != 1 else ''} "
              f"with an epoch, all outside)")
    elif rows:
        b = rows[0]
        state = "RUNNING" if b["status"] == "PENDING" else b["status"]
        print(f"  best so far: trial {b['trial']} AP {b['AP']:.4f} AR100 {b['AR100']:.4f} at epoch {b['best_epoch']} ({state})")
    else:
        print("  best so far: no epoch finished yet")
    # trials on a GPU report the peak memory their allocator held: what packing them must fit
    gpu = [(t.trial_id, peak) for t in view.trials if (peak := _peak_gpu_mib(t.history)) is not None]
    if gpu:
        print("  GPU memory per trial (peak held, MiB): " + ", ".join(f"{tid} {mib:.0f}" for tid, mib in gpu))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    _prepare_ray(args.address)
    from tune.demo import run_demo

    run_demo(Path(args.out), num_trials=args.trials, epochs=args.epochs, address=args.address,
             num_images=args.images, image_size=args.image_size)
    return 0


def _cmd_tensorboard(args: argparse.Namespace) -> int:
    _check_run(args.run)
    from tune.results.tensorboard import serve

    return serve(args.run, host=args.host, port=args.port)


def _cmd_export(args: argparse.Namespace) -> int:
    from tune.ship.checks import check_export_arguments
    from tune.ship.pick import parse_pick

    check_export_arguments(args.out, args.format, args.score_threshold)
    if args.pick is not None:
        parse_pick(args.pick)
    _check_run(args.run)
    from tune.ship.export import chosen_line, export_run

    path, meta = export_run(args.run, args.out, trial=args.trial, fmt=args.format, score_threshold=args.score_threshold,
                            pick=args.pick)
    print(f"exported {path}: {chosen_line(meta)}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from tune.ship.checks import check_export_path, check_predict_arguments, collect_images

    check_predict_arguments(score_threshold=args.score_threshold, batch_size=args.batch_size, out=args.out)
    check_export_path(args.model)
    collect_images(args.images)
    _check_device(args.device)
    from tune.ship.predict import predict_files

    n = predict_files(args.model, args.images, out=args.out, draw=args.draw, score_threshold=args.score_threshold,
                      batch_size=args.batch_size, device=args.device)
    print(f"{n} detections written to {args.out}")
    return 0


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise BoxtuneError(f"{name}: expected a number, got {raw!r}") from None


# sweep, resume and demo: the one documented form (README, docs/cluster.md)
ADDRESS_HELP = ("join a Ray cluster: HEAD_IP:6379 (the head's GCS port), or auto on a node of the cluster; "
                "clients need RAY_AUTH_MODE=token and the cluster's token (default: RAY_ADDRESS, else a local Ray)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boxtune", description="Hyperparameter sweeps with Ray Tune and Optuna for fine-tuning COCO-pretrained torchvision "
                                "detectors (Faster R-CNN, RetinaNet, FCOS, SSDlite), their class heads pruned to your classes.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect datasets, generate the demo dataset")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    s = dsub.add_parser("summary", help="read and validate a dataset; print what was found and repaired")
    s.add_argument("path", help="dataset folder (COCO, VOC or YOLO), COCO .json, YOLO data.yaml, or a manifest .parquet")
    s.add_argument("--format", choices=("auto", "coco", "voc", "yolo"), default="auto")
    s.add_argument("--images-dir", default=None, help="COCO, VOC: folder that holds the image files")
    s.add_argument("--val-path", default=None, help="a separate validation set, same format")
    s.add_argument("--val-fraction", type=float, default=0.2)
    s.add_argument("--test-path", default=None, help="a separate test set, same format")
    s.add_argument("--test-fraction", type=float, default=0.0, help="random test split, drawn from train")
    s.add_argument("--strict", action="store_true", help="cut-short or undecodable images are errors")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--manifest", default=None, help="also write the Parquet manifest here")
    s.set_defaults(func=_cmd_data_summary)
    d = dsub.add_parser("demo", help="generate the demo COCO dataset (simple shapes on clutter)")
    d.add_argument("out")
    d.add_argument("--num-images", type=int, default=240)
    d.add_argument("--image-size", type=int, default=160)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_data_demo)

    t = sub.add_parser("train", help="run one trial with fixed hyperparameters, without Ray")
    t.add_argument("config", help="YAML with data, model, training and hparams sections")
    t.add_argument("--out", required=True, help="folder for checkpoints, metrics.jsonl and TensorBoard events "
                                                "(report, tensorboard and export take it as they take a sweep folder)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    t.add_argument("--epochs", type=int, default=None, help="train this many epochs (same as --set training.epochs=N)")
    t.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads (default: the config's threads, else the CPUs this process may use); AP depends on it")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    t.add_argument("--gpu-memory-fraction", type=float, default=None,
                   metavar="F", help="hold the trial to this share (0, 1] of the GPU's memory, as for trials "
                                     "packed on one GPU (default: BOXTUNE_GPU_MEMORY_FRACTION, else no limit)")
    t.set_defaults(func=_cmd_train)

    w = sub.add_parser("sweep", help="run a hyperparameter sweep (Ray Tune + Optuna)")
    w.add_argument("config", help="sweep YAML")
    w.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. search.num_trials=8")
    w.add_argument("--name", default=None, help="experiment name (config key name)")
    w.add_argument("--address", default=None, help=ADDRESS_HELP)
    w.add_argument("--top", type=_positive_int, default=None, help="show the N best trials")
    w.set_defaults(func=_cmd_sweep)

    r = sub.add_parser("resume", help="continue an interrupted sweep")
    r.add_argument("run", help="the sweep's folder (storage/name) or URI")
    r.add_argument("--address", default=None, help=ADDRESS_HELP)
    r.set_defaults(func=_cmd_resume)

    rp = sub.add_parser("report", help="rank a sweep's trials by search.metric of their best epoch, then AR100; "
                                       "for a train folder, its epochs and its best")
    rp.add_argument("run")
    rp.add_argument("--top", type=_positive_int, default=None, help="show the N best trials")
    rp.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    rp.add_argument("--wide", action="store_true",
                    help="every column in the table (default: what fits 120 columns: the objective, its 95%% "
                         "interval, its standing against the leader, AR100, the epoch, then hyperparameters)")
    rp.add_argument("--output", "-o", default=None, help="write to a file instead of the terminal")
    rp.add_argument("--plot", default=None, metavar="DIR", help="also write PNG plots into DIR")
    rp.add_argument("--html", default=None, metavar="FILE",
                    help="also write the report as one self-contained HTML page (tables, figures, val images)")
    rp.add_argument("--per-class", action="store_true",
                    help="per-class AP and AR100 of the top trials' best epochs (--top, default 1); with --format "
                         "csv/json/parquet, these rows instead of the ranking")
    rp.add_argument("--best-config", default=None, metavar="FILE",
                    help="also write the best trial's `boxtune train` config (data, model, training, threads, hparams)")
    rp.add_argument("--trial", default=None, help="with --best-config: this trial id instead of the best")
    rp.set_defaults(func=_cmd_report)

    st = sub.add_parser("status", help="trials done, running, pending and the best so far (works while a sweep runs)")
    st.add_argument("run")
    st.set_defaults(func=_cmd_status)

    dm = sub.add_parser("demo", help="generate the demo dataset and run a quick sweep on a local Ray")
    dm.add_argument("--out", default="demo_out")
    dm.add_argument("--trials", type=int, default=4)
    dm.add_argument("--epochs", type=int, default=4)
    dm.add_argument("--address", default=None, help=ADDRESS_HELP)
    # a smaller demo dataset, for smoke tests (the documented demo is 240 images of 160 px)
    dm.add_argument("--images", type=int, default=240, help=argparse.SUPPRESS)
    dm.add_argument("--image-size", type=int, default=160, help=argparse.SUPPRESS)
    dm.set_defaults(func=_cmd_demo)

    tb = sub.add_parser("tensorboard", help="start TensorBoard on a sweep's or a train run's folder")
    tb.add_argument("run")
    tb.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    tb.add_argument("--port", type=int, default=6006)
    tb.set_defaults(func=_cmd_tensorboard)

    ex = sub.add_parser("export", help="write the best trial's (or a train run's) best-epoch checkpoint as one "
                                       "self-contained file")
    ex.add_argument("run", help="a sweep folder or URI, or a boxtune train folder")
    ex.add_argument("--out", required=True)
    ex.add_argument("--trial", default=None, help="export this trial id instead of the best")
    ex.add_argument("--pick", default=None, metavar="RULE",
                    help="choose by latency (a sweep with cost.measure): fastest-tied, the fastest trial not "
                         "distinguishable from the best; max-latency=MS, the best trial within MS milliseconds")
    ex.add_argument("--format", choices=("pt", "torchscript", "onnx"), default="pt")
    ex.add_argument("--score-threshold", type=float, default=None, metavar="S",
                    help="torchscript, onnx: the score filter baked into the graph (default: the family's own, "
                         "0.05 Faster R-CNN and RetinaNet, 0.2 FCOS, 0.001 SSDlite)")
    ex.set_defaults(func=_cmd_export)

    pr = sub.add_parser("predict", help="run an exported model on images (no Ray)")
    pr.add_argument("model", help="a .pt file written by boxtune export")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--out", required=True, help="COCO results JSON")
    pr.add_argument("--draw", default=None, metavar="DIR", help="write copies of the images with boxes drawn")
    pr.add_argument("--score-threshold", type=float, default=0.3,
                    help="keep detections scoring at least this; the model's own filter is set to it too (default 0.3)")
    pr.add_argument("--batch-size", type=int, default=4)
    pr.add_argument("--device", default=None)
    pr.set_defaults(func=_cmd_predict)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
        return status
    except BrokenPipeError:
        # the reader went away (`boxtune ... | head`). Python's documented recipe: point stdout at
        # devnull so the flush at exit does not fail again. SIGPIPE stays ignored (Ray's sockets).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except BoxtuneError as err:
        print(f"boxtune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("boxtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

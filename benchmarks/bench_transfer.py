"""Every lever of the sweep measured from a pretrained start: the source model of ``source_model.py``.

The target task is ``TARGET_SPEC`` (``trainables.data.demo``): four of the source's classes and
one it never saw ("cross", always a fresh head row), on checkered backgrounds the source never
showed, with smaller and more objects per image. Each part runs its variants side by side in one
run with the same seeds, and prints (and writes to ``--out``/partN.json) its numbers:

    python benchmarks/bench_transfer.py --part 1   # class_map copy against a fresh head: AP after 1, 2, 4 epochs
    python benchmarks/bench_transfer.py --part 2   # freeze depth 0, 2, 5, 8: AP after 6 epochs (3 seeds), img/s
    python benchmarks/bench_transfer.py --part 3   # ASHA against FIFO: epochs to FIFO's best AP, rung/final rank correlation
    python benchmarks/bench_transfer.py --part 3 --schedulers fifo asha halving   # and batch halving: trials per hour
    python benchmarks/bench_transfer.py --part 4   # the `seed` space against `default` under TPE, same epoch budget,
                                                   # and `default` with one shared `lr` name (before lr_sgd/lr_adam)
    python benchmarks/bench_transfer.py --part 5 --keep DIR   # accuracy against latency: the source's family at
                                                   # two input sizes against SSDlite from random weights

Parts 1 and 2 are single trials (``run_trial``, no Ray); parts 3, 4 and 5 are sweeps on a local Ray
bound to loopback (``--concurrent`` trials at a time, two by default, one CPU each). The source model is trained first if it is
not cached. Sizes are flags; the defaults are the full benchmark (about an hour on 2 idle cores).
``--smoke`` runs a part at tiny sizes from a one-epoch source, to check that it runs.
A synthetic source says little about transfer to photos: these numbers show what the sweep's
levers do when a start is pretrained, not what COCO weights do for a user's data. ``--target
raccoon`` runs parts 1 and 2 on the raccoon photos instead (one class the source never saw, so
part 1 compares a fresh head on the source's body with random weights), written to
``partN-raccoon.json``; part 3 on them (``--schedulers fifo --keep K --confirm 3 2``) gives the
FIFO sweep, its top configs on more seeds, that ``bench_stopping.py`` replays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback only

# the target's dataset classes: the four the source knows map to their own COCO rows
COPY_MAP = {"sports ball": "sports ball", "stop sign": "stop sign", "kite": "kite", "clock": "clock"}
# one recipe for parts 1 and 2: constant lr, so AP after n epochs of a longer run is AP after n epochs
RECIPE = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 4,
          "warmup_iters": 20, "hflip_p": 0.5}


# --target raccoon: 200 labelImg VOC photos of one class the source never saw (160 train, 40 val)
RACCOON = REPO.parent / "shared" / "data" / "raccoon"


def _target(args, tmp: Path):
    from trainables.data import build_manifest
    from trainables.data.demo import TARGET_SPEC, make_shapes_dataset

    if args.target == "raccoon":
        if not RACCOON.is_dir():
            raise SystemExit(f"--target raccoon: no dataset at {RACCOON}")
        return RACCOON, build_manifest(RACCOON, val_fraction=0.2, seed=0)
    path = make_shapes_dataset(tmp / "target", TARGET_SPEC, num_images=args.images, image_size=args.size, seed=1)
    return path, build_manifest(path, val_fraction=0.25, seed=0)


# --smoke: every part in minutes, from a one-epoch source; the numbers mean nothing
_SMOKE = {"images": 16, "size": 64, "at": [1, 2], "depths": [0, 8], "trials": 2, "concurrent": 1, "seeds": [0]}
_SMOKE_EPOCHS = {2: 1, 3: 2, 4: 4, 5: 2}  # part 4's `seed` recipes need 4 epochs to act
_SMOKE_IMAGES = {4: 32}  # `default`'s one-cycle needs a few iterations per epoch at batch 8


def _source(args) -> str:
    from source_model import SourceSettings, source_model

    settings = SourceSettings(num_images=24, image_size=64, epochs=1) if args.smoke else SourceSettings()
    return str(source_model(settings, threads=args.threads))


def _trial(args, manifest, tmp: Path, name: str, *, model: dict, hparams: dict, epochs: int,
           seed: int = 0) -> list[dict]:
    from trainables.loop import TrialResources, run_trial
    from trainables.reporting import LocalReporter

    cfg = {"model": model, "training": {"epochs": epochs, "seed": seed}, "hparams": hparams}
    reporter = LocalReporter(tmp / name)
    run_trial(cfg, manifest=manifest, reporter=reporter, resources=TrialResources(cpus=args.threads, device="cpu"))
    return reporter.history()


def _recipe(args) -> dict:
    return RECIPE if args.lr is None else {**RECIPE, "lr": args.lr}


def _copy_map(args) -> dict:
    return {} if args.target == "raccoon" else COPY_MAP


def _model(args, weights: str | None, class_map: dict) -> dict:
    from source_model import model_config

    return model_config(args.size, weights, class_map)


def part1(args, tmp: Path) -> dict:
    """class_map copy against a fresh head (and random weights for scale), same recipe, seed and data."""
    _, manifest = _target(args, tmp)
    weights = _source(args)
    variants = {"copy": (weights, COPY_MAP), "fresh_head": (weights, {}), "random_init": (None, {})}
    if args.target == "raccoon":  # no source class to copy a row from
        if "copy" in (args.variants or ()):
            raise SystemExit("--target raccoon: the source has no raccoon row to copy; use fresh_head, random_init")
        del variants["copy"]
    out = {}
    for name in args.variants or list(variants):
        w, class_map = variants[name]
        history = _trial(args, manifest, tmp, name, model=_model(args, w, class_map), hparams=_recipe(args), epochs=max(args.at))
        out[name] = {f"AP@{e}": round(history[e - 1]["AP"], 4) for e in args.at}
        out[name].update({f"AP50@{e}": round(history[e - 1]["AP50"], 4) for e in args.at})
    return out


def part2(args, tmp: Path) -> dict:
    """Freeze depths from the source, same recipe, each training seed of ``--seeds``: AP after
    ``--epochs`` (and each epoch's AP) and training img/s, per seed and their mean."""
    _, manifest = _target(args, tmp)
    weights = _source(args)
    out = {}
    for depth in args.depths:
        runs = [_trial(args, manifest, tmp, f"depth{depth}-seed{seed}", model=_model(args, weights, _copy_map(args)),
                       hparams={**_recipe(args), "freeze_depth": depth}, epochs=args.epochs, seed=seed)
                for seed in args.seeds]
        out[f"depth{depth}"] = {
            "AP": round(_mean(h[-1]["AP"] for h in runs), 4), "AP50": round(_mean(h[-1]["AP50"] for h in runs), 4),
            "AP_per_seed": [round(h[-1]["AP"], 4) for h in runs],
            "AP_curves": [[round(r["AP"], 4) for r in h] for h in runs],
            "images_per_s": round(_mean(h[-1]["images_per_s"] for h in runs), 2),
            "trainable_params": int(runs[0][-1]["trainable_params"])}
    return out


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _sweep_config(args, tmp: Path, data: Path, weights: str, *, name: str, space, scheduler: dict):
    from tune.config import SweepConfig

    return SweepConfig.model_validate({
        "name": name,
        "data": {"path": str(data), "val_fraction": 0.2 if args.target == "raccoon" else 0.25, "seed": 0},
        "model": _model(args, weights, _copy_map(args)),
        "training": {"epochs": args.epochs, "seed": 0},
        "search": {"space": space, "num_trials": args.trials, "sampler": "tpe", "seed": 0},
        "scheduler": scheduler,
        "resources": {"cpu": 1},
        "max_concurrent": args.concurrent,
        "storage": str(tmp / "runs"),
        "retries": 0,
    })


def _curves(run: Path) -> dict[str, list[dict]]:
    """Each trial's per-epoch results, as Ray recorded them (result.json)."""
    curves = {}
    for result in run.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            curves[rows[0]["trial_id"]] = sorted(rows, key=lambda r: r["epoch"])
    return curves


def _epochs_to_reach(curves: dict[str, list[dict]], target: float) -> int | None:
    spent = 0
    rows = [r for rs in curves.values() for r in rs]
    for r in sorted(rows, key=lambda r: (r["timestamp"], r["time_total_s"])):  # when each epoch finished
        spent += 1
        if r["AP"] >= target - 1e-9:
            return spent
    return None


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on mean ranks); None if either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def _sampled(rows: list[dict]) -> dict:
    config = rows[0].get("config", {})
    lr = next((config[k] for k in ("lr_sgd", "lr_adam", "lr") if k in config), None)
    return {"optimizer": config.get("optimizer"), "lr": None if lr is None else float(f"{lr:.3g}"),
            "AP": round(rows[-1]["AP"], 4)}


def _run(cfg) -> tuple[dict[str, list[dict]], float]:
    from tune.workflow import run_sweep

    t0 = time.perf_counter()
    run_sweep(cfg, echo=lambda *_: None)
    return _curves(Path(cfg.storage) / cfg.name), time.perf_counter() - t0


def part3(args, tmp: Path) -> dict:
    """ASHA (and, with ``--schedulers``, batch halving) against FIFO, same TPE seed and space: epochs
    to FIFO's best AP, trials per hour; rung-vs-final rank correlation."""
    import ray

    data, _ = _target(args, tmp)
    weights = _source(args)
    curves, wall = {}, {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name in ["fifo", *(s for s in args.schedulers if s != "fifo")]:
            scheduler = {"name": name}
            if name != "fifo":
                scheduler["reduction_factor"] = args.reduction_factor
                if args.grace_period is not None:  # else boxtune's default for the start
                    scheduler["grace_period"] = args.grace_period
            cfg = _sweep_config(args, tmp, data, weights, name=name, space=args.space, scheduler=scheduler)
            if name == "fifo" and args.confirm:  # the top configs retrained on new seeds (bench_stopping.py reads them)
                top, seeds = args.confirm
                cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={
                    "confirm": cfg.search.confirm.model_copy(update={"top": top, "seeds": seeds})})})
            curves[name], wall[name] = _run(cfg)
    finally:
        ray.shutdown()
    fifo = curves["fifo"]
    best = max(r["AP"] for rs in fifo.values() for r in rs)
    out = {"fifo_best_AP": round(best, 4)}
    for name, run in curves.items():
        out[f"{name}_best_AP"] = round(max(r["AP"] for rs in run.values() for r in rs), 4)
        out[f"{name}_epochs"] = sum(map(len, run.values()))
        out[f"{name}_epochs_to_fifo_best"] = _epochs_to_reach(run, best)
        out[f"{name}_wall_s"] = round(wall[name], 1)
        out[f"{name}_trials_per_hour"] = round(len(run) / wall[name] * 3600, 1)
        out[f"{name}_epochs_per_hour"] = round(out[f"{name}_epochs"] / wall[name] * 3600, 1)
    if out.get("asha_epochs_to_fifo_best"):
        out["ratio"] = round(out["asha_epochs_to_fifo_best"] / out["fifo_epochs_to_fifo_best"], 3)
    # from FIFO's complete curves: does AP at each epoch order the trials as their final AP does?
    complete = [rs for rs in fifo.values() if len(rs) == args.epochs]
    final = [rs[-1]["AP"] for rs in complete]
    out["spearman_epoch_vs_final"] = {
        e: (None if (rho := spearman([rs[e - 1]["AP"] for rs in complete], final)) is None else round(rho, 3))
        for e in range(1, args.epochs)}
    for name, run in curves.items():
        out[f"{name}_curves"] = {t: [round(r["AP"], 4) for r in rs] for t, rs in sorted(run.items())}
    return out


class _SharedLr:
    """An Optuna trial whose ``lr_sgd`` and ``lr_adam`` are one parameter, ``lr``: the default space
    as it was before per-optimiser names, when TPE put both optimisers' rates into one density."""

    def __init__(self, trial):
        self._trial = trial

    def suggest_float(self, name, *args, **kwargs):
        return self._trial.suggest_float("lr" if name in ("lr_sgd", "lr_adam") else name, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._trial, name)


def _shared_lr_space(trial, *, bounds):
    from search_spaces.builtin import _default_space

    return _default_space(_SharedLr(trial), bounds=bounds)


def default_shared_lr(*, max_freeze_depth: int, epochs: int | None = None):
    """Factory (see ``search_spaces.registry``): ``default`` with one ``lr`` name for every optimiser."""
    import functools

    from search_spaces.builtin import DEFAULT_EPOCHS, _bounds

    bounds = _bounds(max_freeze_depth=max_freeze_depth, epochs=DEFAULT_EPOCHS if epochs is None else epochs)
    return functools.partial(_shared_lr_space, bounds=bounds)


# part 4's spaces: the name in the results -> the sweep's search.space
PART4_SPACES = {"seed": "seed", "default": "default", "default_shared_lr": "bench_transfer:default_shared_lr"}


def part4(args, tmp: Path) -> dict:
    """The `seed` space against `default` (and `default` with one shared ``lr``) under TPE: best AP,
    and the epochs `default` spends to reach `seed`'s best. Then the sampler alone (see
    ``_sampler_check``): where TPE puts Adam's learning rates under one name and under two."""
    import ray

    data, _ = _target(args, tmp)
    weights = _source(args)
    out, curves = {}, {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name in args.spaces:
            # `seed` is two fixed recipes and training.seed is fixed: more trials would repeat them exactly
            cfg = _sweep_config(args, tmp, data, weights, name=name, space=PART4_SPACES[name], scheduler={"name": "fifo"})
            if name == "seed":
                cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"num_trials": min(2, args.trials)})})
            curves[name], wall = _run(cfg)
            out[name] = {"best_AP": round(max(r["AP"] for rs in curves[name].values() for r in rs), 4),
                         "trials": len(curves[name]), "epochs": sum(map(len, curves[name].values())),
                         "wall_s": round(wall, 1),
                         "final_APs": sorted((round(rs[-1]["AP"], 4) for rs in curves[name].values()), reverse=True),
                         # what TPE proposed, one entry per trial (by trial id): optimiser, lr, final AP
                         "sampled": [_sampled(rs) for _, rs in sorted(curves[name].items())]}
    finally:
        ray.shutdown()
    if "seed" in out:
        for name in set(out) - {"seed"}:
            out[name]["epochs_to_seed_best"] = _epochs_to_reach(curves[name], out["seed"]["best_AP"])
    out["sampler"] = {name: _sampler_check(PART4_SPACES[name], epochs=args.epochs)
                      for name in ("default", "default_shared_lr")}
    return out


def _sampler_check(space_spec: str, *, epochs: int, seeds: int = 10, trials: int = 40) -> dict:
    """TPE on a made-up objective of the optimiser and its learning rate, no training: SGD is best
    at lr 0.02 and better than Adam, which is best at 1e-4; the value falls by 1 per decade away.
    Reports, for the Adam/AdamW trials TPE proposes after its 10 random start-up trials, the share
    whose lr lies in the top half-decade of Adam's range (where SGD's good rates pull a shared
    name) and the median distance from Adam's best, in decades; per sampler seed and over all."""
    import math
    import statistics

    import optuna

    from search_spaces import resolve_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best = {"sgd": 0.02, "adam": 1e-4, "adamw": 1e-4}
    space = resolve_space(space_spec, max_freeze_depth=8, epochs=epochs, pretrained=True)
    high, dist = [], []
    for seed in range(seeds):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        late = []
        for i in range(trials):
            trial = study.ask()
            space(trial)
            opt = trial.params["optimizer"]
            name = next(k for k in ("lr_sgd", "lr_adam", "lr") if k in trial.params)
            lr = trial.params[name]
            decades = abs(math.log10(lr / best[opt]))
            study.tell(trial, (0.0 if opt == "sgd" else -0.3) - decades)
            if i >= 10 and opt != "sgd":
                late.append((lr > trial.distributions[name].high / 10**0.5, decades))
        high.append(sum(top for top, _ in late) / len(late) if late else None)
        dist.append(statistics.median(d for _, d in late) if late else None)
    seen = [h for h in high if h is not None]
    return {"adam_lr_in_top_half_decade": [None if h is None else round(h, 2) for h in high],
            "adam_lr_in_top_half_decade_mean": round(sum(seen) / len(seen), 3),
            "adam_decades_from_best_median": [None if d is None else round(d, 2) for d in dist]}


# part 5: the families searched. The source's own family starts from the source model (its class
# rows copied) at three input sizes; SSDlite has no source model, so it starts from random weights.
SSDLITE = "ssdlite320_mobilenet_v3_large"


def part5_config(args, tmp: Path, data: Path, weights: str):
    """The sweep of part 5: ``search.metric: [AP, latency_ms]`` over the source's architecture at
    ``--image-sizes`` (pretrained) and SSDlite (random weights, 320 px fixed), ``--scheduler`` (fifo:
    a rung would rank trials from random weights before they take off; see
    ``tune.launch.sweep.mixed_starts_note``)."""
    from source_model import ARCHITECTURE

    from tune.config import SweepConfig

    space = {"architecture": {"choice": [ARCHITECTURE, SSDLITE]},
             "image_size": {"choice": list(args.image_sizes), "when": {"architecture": ARCHITECTURE}},
             "optimizer": "sgd", "lr": {"loguniform": [0.003, 0.03]}, "momentum": 0.9, "weight_decay": 1e-4,
             "batch_size": 4, "warmup_iters": 20, "hflip_p": 0.5}
    return SweepConfig.model_validate({
        "name": "front",
        "data": {"path": str(data), "val_fraction": 0.25, "seed": 0},
        "model": {"architecture": ARCHITECTURE, "weights": weights, "class_map": COPY_MAP,
                  "by_architecture": {ARCHITECTURE: {"box_batch_size_per_image": 128}, SSDLITE: {"weights": None}}},
        "training": {"epochs": args.epochs, "seed": 0},
        "search": {"space": space, "num_trials": args.trials, "sampler": "tpe", "seed": 0,
                   "metric": ["AP", "latency_ms"]},
        "scheduler": {"name": args.scheduler},
        "cost": {"threads": 1, "onnx": True},
        "resources": {"cpu": 1},
        "max_concurrent": args.concurrent,
        "storage": str(tmp / "runs"),
        "retries": 0,
    })


def part5(args, tmp: Path) -> dict:
    """Accuracy against latency on the target: each trial's architecture, input size, best AP with
    its 95% interval, latency (PyTorch and ONNX Runtime, one thread, batch 1), parameters and
    whether it is on the front, in ranking order."""
    from tune.workflow import run_sweep

    data, _ = _target(args, tmp)
    weights = _source(args)
    cfg = part5_config(args, tmp, data, weights)
    # the sweep starts its own local Ray after timing the models, as `boxtune sweep` does: Ray's
    # starting processes would share the cores with the timing
    t0 = time.perf_counter()
    rows = run_sweep(cfg, echo=print)
    wall = time.perf_counter() - t0

    def number(value, digits):
        return None if value is None or value != value else round(float(value), digits)

    keep = ("rank", "trial", "architecture", "image_size", "lr", "epochs", "front")
    return {"run": str(Path(cfg.storage) / cfg.name), "wall_s": round(wall, 1), "epochs": sum(r["epochs"] for r in rows),
            "trials": [{**{k: r.get(k) for k in keep}, "AP": number(r["score"], 4), "ci_low": number(r.get("ci_low"), 4),
                        "ci_high": number(r.get("ci_high"), 4), "latency_ms": number(r["latency_ms"], 2),
                        "latency_p10_ms": number(r["latency_p10_ms"], 2), "latency_p90_ms": number(r["latency_p90_ms"], 2),
                        "onnx_latency_ms": number(r.get("onnx_latency_ms"), 2), "params": r["params"],
                        "file_mb": number(r["file_mb"], 2)} for r in rows]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", type=int, choices=(1, 2, 3, 4, 5), required=True)
    p.add_argument("--target", choices=("shapes", "raccoon"), default="shapes",
                   help="parts 1, 2, 3: the generated target task, or the raccoon photos (../shared/data/raccoon)")
    p.add_argument("--images", type=int, default=150, help="target images (a quarter of them val)")
    p.add_argument("--size", type=int, default=128, help="image side and model input side, px")
    p.add_argument("--threads", type=int, default=2, help="torch threads of a single trial (parts 1, 2)")
    p.add_argument("--lr", type=float, default=None, help=f"parts 1, 2: SGD's constant lr ({RECIPE['lr']})")
    p.add_argument("--at", type=int, nargs="+", default=[1, 2, 4], help="part 1: epochs to report AP after")
    p.add_argument("--variants", nargs="+", choices=("copy", "fresh_head", "random_init"), help="part 1: which")
    p.add_argument("--depths", type=int, nargs="+", default=[0, 2, 5, 8], help="part 2: freeze depths")
    p.add_argument("--epochs", type=int, default=None, help="part 2: epochs per depth; parts 3, 4, 5: per trial (6)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="part 2: training seeds (the split stays)")
    p.add_argument("--trials", type=int, default=None,
                   help="parts 3, 4, 5: trials per sweep (12; 16 for part 4, whose `seed` space runs 2)")
    p.add_argument("--space", default="quick", help="part 3: the search space")
    p.add_argument("--image-sizes", type=int, nargs="+", default=[160, 320],
                   help="part 5: the input sizes searched for the source's architecture, px")
    p.add_argument("--scheduler", choices=("fifo", "halving", "asha"), default="fifo",
                   help="part 5: the sweep's scheduler (boxtune's default grace period)")
    p.add_argument("--spaces", nargs="+", choices=tuple(PART4_SPACES), default=list(PART4_SPACES),
                   help="part 4: which spaces")
    p.add_argument("--concurrent", type=int, default=2, help="parts 3, 4, 5: trials at a time (one CPU each)")
    p.add_argument("--grace-period", type=int, default=None,
                   help="part 3: ASHA's grace period, epochs (boxtune's default: 2 from the pretrained source)")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="part 3: ASHA's reduction factor")
    p.add_argument("--schedulers", nargs="+", choices=("fifo", "asha", "halving"), default=["fifo", "asha"],
                   help="part 3: the schedulers run, FIFO always first (halving: tune.launch.halving)")
    p.add_argument("--confirm", type=int, nargs=2, metavar=("TOP", "SEEDS"), default=None,
                   help="part 3: FIFO's sweep retrains its TOP configs on SEEDS new seeds (search.confirm)")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "boxtune-bench-transfer"))
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="keep the target data and every trial's folder (metrics, checkpoints, stored val detections) "
                        "in DIR instead of a temporary folder, e.g. for benchmarks/bench_interval_width.py")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and a one-epoch source: checks the script runs")
    args = p.parse_args(argv)
    if args.target != "shapes" and args.part in (4, 5):
        p.error(f"--target {args.target}: part {args.part} sweeps the generated target only")
    if args.smoke:
        vars(args).update(_SMOKE, epochs=_SMOKE_EPOCHS.get(args.part))
        args.images = _SMOKE_IMAGES.get(args.part, args.images)
    if args.epochs is None:
        args.epochs = 6
    if args.trials is None:
        args.trials = 16 if args.part == 4 else 12
    import torch

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="boxtune-transfer-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = {1: part1, 2: part2, 3: part3, 4: part4, 5: part5}[args.part](args, work)
    report = {"part": args.part, "setup": vars(args), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "load_average_1min": round(os.getloadavg()[0], 1), "wall_s": round(time.perf_counter() - started, 1),
              **result}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    suffix = "" if args.target == "shapes" else f"-{args.target}"
    (Path(args.out) / f"part{args.part}{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

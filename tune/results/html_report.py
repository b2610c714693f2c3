"""A sweep as one self-contained HTML page (``boxtune report RUN --html FILE``).

The page needs no network: its CSS and the small script that sorts tables are inline, and every
figure is an SVG or PNG inside the file as a ``data:`` URI. It holds, top to bottom:

* the ranking: the rows and cells of ``boxtune report``'s table (``tune.run.ranking.rank_trials``,
  rendered by ``tune.results.report``), each row's 95% interval and standing against the leader,
  rows within noise of the leader marked, and the report's notes;
* the ranking's intervals as a figure (where the best epochs' detections are stored);
* AP per epoch for every trial (``tune.results.plots.ap_per_epoch_figure``);
* per-class AP, AP50 and AR100 of the top trials (``per_class_rows``) and a figure of the best one's;
* Optuna's importances (or why there are none);
* val images with the best trial's detections over the ground truth (white), from the detections
  its best epoch stored;
* the sweep's config (``sweep.yaml``) and the data summary of its manifest.

Clicking a column header sorts a table by it (again: the other way). Each figure is a
``<figure id="fig-...">``; ``FIGURES`` names them in page order.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from trainables.errors import BoxtuneError
from tune.results.plots import ap_per_epoch_figure, importance_figure
from tune.results.report import (
    NOT_TESTED,
    Importances,
    _cell,
    _table_columns,
    param_importances,
    per_class_rows,
    sweep_notes,
)
from tune.run.front import eligible
from tune.run.view import SweepView

__all__ = ["FIGURES", "render_html", "write_html_report", "IMAGES_SHOWN", "PER_CLASS_TOP"]

# figure ids, in page order; a page holds those its sweep has data for (``figure_ids``)
FIGURES = ("fig-intervals", "fig-ap-per-epoch", "fig-per-class", "fig-importance", "fig-val-images")
IMAGES_SHOWN = 8  # val images drawn with the best trial's detections
PER_CLASS_TOP = 3  # trials whose per-class numbers are listed
SCORE_THRESHOLD = 0.3  # detections drawn on the val images: score at least this (as TensorBoard's grid)
_IMAGE_PX = 320  # a val image's shorter displayed side, CSS px (tiny images are scaled up)

# the ranking table's header -> the row key whose raw value sorts it
_SORT_KEYS = {"95%CI": "ci_low", "vs_leader": "leader_beats", "epoch": "best_epoch"}


def write_html_report(view: SweepView, rows: list[dict[str, Any]], path: str | Path, *,
                      importances: Importances | None = None) -> Path:
    """Write the page for ``view`` ranked as ``rows`` (``rank_trials(view)``) to ``path``; return it."""
    path = Path(path)
    if path.is_dir():
        raise BoxtuneError(f"--html {path}: is a folder; give a file name such as {path / 'report.html'}")
    text = render_html(view, rows, importances=importances)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise BoxtuneError(f"--html {path}: cannot write ({err.strerror})") from None
    return path


def render_html(view: SweepView, rows: list[dict[str, Any]], *, importances: Importances | None = None) -> str:
    """The whole page as a string."""
    importances = param_importances(view) if importances is None else importances
    name = view.config.name if view.config is not None else Path(view.uri).name
    finished = sum(1 for r in rows if r["best_epoch"] > 0)
    label = view.objective.label if view.objective is not None else "AP"
    sections = [
        _section("ranking", "Ranking", _ranking_table(rows) + _notes(view, rows) + _intervals_figure(view, rows)),
        _section("epochs", "AP per epoch",
                 _svg_figure("fig-ap-per-epoch", ap_per_epoch_figure(view, planned_epochs=_planned(view)),
                             "Validation AP per epoch, one line per trial; x: stopped early by the scheduler")),
        _section("per-class", "Per class", _per_class(view, rows)),
        _section("importance", "Hyperparameter importance", _importance(importances)),
        _section("images", "Val images", _val_images(view, rows)),
        _section("config", "Config and data", _config_and_data(view)),
    ]
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"<header><h1>boxtune sweep <code>{_e(name)}</code></h1><p class=meta>{_e(view.uri)} &middot; "
              f"{len(view.trials)} of {view.num_trials} trials, {finished} with a finished epoch &middot; "
              f"ranked by {_e(label)} on val &middot; written {created}</p>"
              f"<nav>{''.join(f'<a href=#{k}>{t}</a>' for k, t in _NAV)}</nav></header>")
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>boxtune: {_e(name)}</title><link rel=icon href='data:,'><style>{_CSS}</style></head>"
            f"<body>{header}<main>{''.join(sections)}</main><script>{_SCRIPT}</script></body></html>\n")


_NAV = (("ranking", "Ranking"), ("epochs", "AP per epoch"), ("per-class", "Per class"),
        ("importance", "Importance"), ("images", "Val images"), ("config", "Config and data"))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _section(key: str, title: str, body: str) -> str:
    return f"<section id={key}><h2>{_e(title)}</h2>{body}</section>"


def _planned(view: SweepView) -> int | None:
    return None if view.config is None else int(view.config.training.epochs)


def _sort_value(value: Any) -> str:
    """A cell's ``data-sort``: numbers as numbers, nothing measured empty (sorts last)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def _table(header: list[str], body: list[tuple[dict[str, str], list[tuple[str, str]]]], *, table_id: str) -> str:
    """A sortable table: ``body`` rows are (row attributes, [(cell text, sort value)])."""
    head = "".join(f"<th scope=col tabindex=0>{_e(h)}</th>" for h in header)
    lines = []
    for attrs, cells in body:
        attr = "".join(f" {k}='{_e(v)}'" for k, v in attrs.items())
        tds = "".join(f"<td data-sort='{_e(s)}'>{_e(c)}</td>" for c, s in cells)
        lines.append(f"<tr{attr}>{tds}</tr>")
    return (f"<div class=scroll><table class=sortable id={table_id}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(lines)}</tbody></table></div>")


def _ranking_table(rows: list[dict[str, Any]]) -> str:
    """``boxtune report``'s table columns and cells; rows within noise of the leader marked."""
    if not rows:
        return "<p>No trials yet.</p>"
    columns = _table_columns(rows, wide=False)
    body = []
    for row in rows:
        kind = []
        if row.get("distinguishable") is False and row["rank"] != 1:
            kind.append("noise")
        if row["rank"] == 1 and row["best_epoch"] and eligible(row):
            kind.append("leader")
        if row.get("error"):
            kind.append("errored")
        attrs = {"data-trial": row["trial"], "class": " ".join(kind)}
        if row.get("error"):
            attrs["title"] = row["error"]
        cells = [(render(row), _sort_value(row.get(_SORT_KEYS.get(name, name)))) for name, render in columns]
        body.append((attrs, cells))
    return _table([name for name, _ in columns], body, table_id="ranking-table")


def _notes(view: SweepView, rows: list[dict[str, Any]]) -> str:
    notes = [_e(n) for n in sweep_notes(view)]
    if any(r.get("distinguishable") is False and r["rank"] != 1 for r in rows):
        notes.insert(0, "<span class='swatch noise'></span> shaded rows: within noise of the leader "
                        "(it scores higher in fewer than 95% of paired resamples)")
    errors = [f"<code>{_e(r['trial'])}</code>: {_e(r['error'])}" for r in rows if r.get("error")]
    if errors:
        notes.append("errored trials: " + "; ".join(errors))
    return "<ul class=notes>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _svg_figure(fig_id: str, fig, caption: str) -> str:
    """A matplotlib figure as an inline SVG image (fonts drawn as paths: nothing to fetch)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    data = base64.b64encode(buf.getvalue()).decode()
    return (f"<figure id={fig_id}><img src='data:image/svg+xml;base64,{data}' alt='{_e(caption)}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _intervals_figure(view: SweepView, rows: list[dict[str, Any]]) -> str:
    """Each ranked trial's objective with its 95% interval, leader first; within-noise points hollow."""
    shown = [r for r in rows if r["best_epoch"] > 0 and r.get("ci_low") is not None and not math.isnan(r["ci_low"])]
    if not shown:
        return ""
    key = "objective" if "objective" in shown[0] else "AP"
    label = view.objective.label if view.objective is not None else "AP"
    fig = _figure(7.0, max(1.8, 0.35 * len(shown) + 1.0))
    ax = fig.add_subplot()
    for y, row in enumerate(shown):
        value = row[key]
        noise = row.get("distinguishable") is False and row["rank"] != 1
        ax.plot([row["ci_low"], row["ci_high"]], [y, y], color="#4363d8", linewidth=2)
        ax.plot([value], [y], marker="o", markersize=6, color="#4363d8",
                markerfacecolor="white" if noise else "#4363d8", linestyle="none")
    ax.set_yticks(range(len(shown)), [f"{r['rank']}. {r['trial']}" for r in shown])
    ax.invert_yaxis()
    ax.set_xlabel(f"{label} of the best epoch on val, 95% interval (hollow: within noise of the leader)")
    ax.grid(axis="x", alpha=0.3)
    return _svg_figure("fig-intervals", fig, f"{label} with its 95% paired-bootstrap interval, best first")


def _per_class(view: SweepView, rows: list[dict[str, Any]]) -> str:
    lines = per_class_rows(view, rows, top=PER_CLASS_TOP)
    if not lines:
        return "<p>No per-class numbers: no trial has finished an epoch.</p>"
    keys = [k for k in dict.fromkeys(k for line in lines for k in line) if not k.endswith("_ci_high")]
    header = [f"{k.removesuffix('_ci_low')} 95%CI" if k.endswith("_ci_low") else k for k in keys]
    body = []
    for line in lines:
        cells = []
        for k in keys:
            if k.endswith("_ci_low"):
                low, high = line.get(k), line.get(k.replace("_ci_low", "_ci_high"))
                text = NOT_TESTED if low is None or math.isnan(low) else f"{low:.3f}..{high:.3f}"
                cells.append((text, _sort_value(low)))
            else:
                cells.append((_cell(line.get(k)), _sort_value(line.get(k))))
        body.append(({"data-trial": line["trial"]}, cells))
    table = _table(header, body, table_id="per-class-table")
    best = [line for line in lines if line["rank"] == lines[0]["rank"]]
    fig = _figure(7.0, max(2.0, 0.4 * len(best) + 1.2))
    ax = fig.add_subplot()
    names = [line["class"] for line in best]
    values = [0.0 if math.isnan(line["AP"]) else line["AP"] for line in best]
    if all("AP_ci_low" in line for line in best):
        errors = [[max(0.0, v - line["AP_ci_low"]) for v, line in zip(values, best, strict=True)],
                  [max(0.0, line["AP_ci_high"] - v) for v, line in zip(values, best, strict=True)]]
        ax.barh(names, values, xerr=errors, color="#3cb44b", ecolor="#333333", capsize=3)
    else:
        ax.barh(names, values, color="#3cb44b")
    ax.invert_yaxis()
    ax.set_xlabel("AP@[.5:.95] on val (bars: 95% interval where detections are stored)")
    ax.set_title(f"Per-class AP, trial {best[0]['trial']} at epoch {best[0]['epoch']}")
    ax.grid(axis="x", alpha=0.3)
    caption = f"Per-class AP of the best trial ({best[0]['trial']}, epoch {best[0]['epoch']})"
    return table + _svg_figure("fig-per-class", fig, caption)


def _importance(importances: Importances) -> str:
    lines = "".join(f"<li>{_e(line.strip())}</li>" for line in importances.lines()[:1])
    if not importances:
        return f"<ul class=notes>{lines}</ul>"
    body = [({}, [(k, _sort_value(-i)), (f"{v:.3f}", _sort_value(v))]) for i, (k, v) in enumerate(importances.items())]
    left_out = ""
    if importances.left_out:
        left_out = f"<li>left out (conditional, not in every trial): {_e(', '.join(importances.left_out))}</li>"
    return (f"<ul class=notes>{lines}{left_out}</ul>"
            + _table(["hyperparameter", "importance"], body, table_id="importance-table")
            + _svg_figure("fig-importance", importance_figure(importances),
                          "Optuna fANOVA importance of each hyperparameter for the objective"))


def _val_images(view: SweepView, rows: list[dict[str, Any]]) -> str:
    """The first ``IMAGES_SHOWN`` val images with the best trial's best-epoch detections (colour)
    over the ground truth (white); a note when no detections are stored."""
    best = next((r for r in rows if r["best_epoch"] > 0), None)
    if best is None or view.folder is None:
        return "<p>No val images: no trial has finished an epoch.</p>"
    trial = view.trial(best["trial"])
    detections = view.folder.read_detections(trial.dir_name, best["best_epoch"])
    if detections is None:
        return (f"<p>No val images: trial {_e(best['trial'])} stored no detections for epoch "
                f"{best['best_epoch']} (a run from before detections were stored).</p>")
    import torch

    from trainables.data import load_image
    from trainables.drawing import draw_detections
    from trainables.errors import DataError

    manifest = view.manifest()
    names = {c.label: c.name for c in manifest.classes}
    tiles, missing = [], []
    for record in manifest.records("val")[:IMAGES_SHOWN]:
        try:
            image = load_image(record).as_subclass(torch.Tensor)
        except (DataError, OSError) as err:
            missing.append(f"{record.file_name}: {err}")
            continue
        det = {k: torch.tensor(v) for k, v in detections.get(record.image_id, {}).items()}
        drawn = draw_detections(image, det, names=names, score_threshold=SCORE_THRESHOLD,
                                ground_truth=torch.tensor(record.boxes).reshape(-1, 4))
        shown = int((det["scores"] >= SCORE_THRESHOLD).sum()) if "scores" in det else 0
        tiles.append(f"<figure class=tile><img class=val-image src='data:image/png;base64,{_png(drawn)}' "
                     f"style='{_tile_size(record.width, record.height)}' alt='{_e(record.file_name)}'>"
                     f"<figcaption>{_e(record.file_name)}: {shown} detection{'s' if shown != 1 else ''}, "
                     f"{len(record.boxes)} ground-truth box{'es' if len(record.boxes) != 1 else ''}</figcaption></figure>")
    note = (f"<p class=meta>Trial {_e(best['trial'])} (rank 1), epoch {best['best_epoch']}: detections scoring "
            f"{SCORE_THRESHOLD} or more in their class's colour, ground truth in white.</p>")
    if missing:
        note += "<ul class=notes>" + "".join(f"<li>not shown: {_e(m)}</li>" for m in missing) + "</ul>"
    if not tiles:
        return note
    return f"{note}<figure id=fig-val-images><div class=tiles>{''.join(tiles)}</div></figure>"


def _png(image) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _tile_size(width: int, height: int) -> str:
    scale = _IMAGE_PX / max(1, min(width, height))
    return f"width:{round(width * scale)}px;height:{round(height * scale)}px"


def _config_and_data(view: SweepView) -> str:
    parts = []
    if view.config is not None:
        text = yaml.safe_dump(view.config.model_dump(mode="json"), sort_keys=False)
        parts.append(f"<details open><summary>sweep.yaml</summary><pre>{_e(text)}</pre></details>")
    if view.folder is not None:
        from trainables.data import summarize

        try:
            summary = summarize(view.manifest())
        except (OSError, ValueError) as err:
            summary = f"the manifest could not be read: {err}"
        parts.append(f"<details open><summary>data</summary><pre>{_e(summary)}</pre></details>")
    return f"<div class=columns>{''.join(parts)}</div>"


_CSS = """
:root{--fg:#1d1d1f;--muted:#5f6368;--line:#d9dce1;--head:#f3f4f6;--noise:#fff6d6;--leader:#e7f6ea;--err:#fde8e8}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg)}
header{padding:14px 24px 8px;border-bottom:1px solid var(--line);position:sticky;top:0;background:#fff;z-index:2}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.meta{color:var(--muted);margin:0 0 6px}
nav a{margin-right:14px;color:#2457c5;text-decoration:none}nav a:hover{text-decoration:underline}
main{max-width:1320px;margin:0 auto;padding:0 24px 40px}
section{scroll-margin-top:90px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;white-space:nowrap}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left}
th{background:var(--head);cursor:pointer;user-select:none;position:relative;padding-right:16px}
th::after{content:"\\2195";position:absolute;right:4px;color:#aaa;font-size:11px}
th[aria-sort=ascending]::after{content:"\\25B2";color:var(--fg)}
th[aria-sort=descending]::after{content:"\\25BC";color:var(--fg)}
tr.noise td{background:var(--noise)}tr.leader td{background:var(--leader);font-weight:600}
tr.errored td{background:var(--err)}
.swatch{display:inline-block;width:12px;height:12px;vertical-align:middle;border:1px solid var(--line)}
.swatch.noise{background:var(--noise)}
ul.notes{color:var(--muted);padding-left:18px;margin:8px 0}
figure{margin:16px 0}figure img{max-width:100%;height:auto}
figcaption{color:var(--muted);font-size:13px}
.tiles{display:flex;flex-wrap:wrap;gap:12px}
.tile{margin:0;max-width:100%}.tile img{image-rendering:pixelated;display:block;max-width:100%;object-fit:contain}
.columns{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:16px}
pre{background:var(--head);padding:10px;overflow:auto;max-height:480px;font-size:12.5px;margin:6px 0}
summary{cursor:pointer;font-weight:600}
"""

# Click a header: sort by its column's data-sort (as numbers when every value is one; empty cells
# last); click again: the other way.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    function sort() {
      var up = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(r) { return r.cells[col].dataset.sort; }
      var numeric = rows.every(function (r) { return key(r) === "" || !isNaN(Number(key(r))); });
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var c = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
  });
});
"""

"""``gpt2sup report``'s page: one self-contained HTML file from a ``RunHistory``.

Self-contained means no server, no network and no script: the curves are matplotlib drawings
inlined as SVG (text kept as text, coordinates rounded), the tables are HTML, and the figures the
page shows are also embedded as JSON (``<script type="application/json" id="gpt2sup-report-data">``,
data a browser never runs) for anyone who wants to re-plot them. Curves are downsampled to at most
``MAX_POINTS`` per series (bucket means; validation and HellaSwag points are kept unless there are
more), every fault is kept, so a run of many thousand steps still gives a page of tens of KB.
"""
from __future__ import annotations

import html
import io
import itertools
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from supervisor.views.run_history import Fault, RunHistory, format_seconds

MAX_POINTS = 200
# How each kind of event is drawn: colour and legend label. Kinds not listed are drawn grey.
FAULT_STYLE: dict[str, tuple[str, str]] = {
    "crashed": ("#d62728", "crash"),
    "hung": ("#ff7f0e", "hang"),
    "quarantined": ("#9467bd", "quarantined checkpoint"),
    "restarted": ("#2ca02c", "restart"),
    "stop_requested": ("#7f7f7f", "stop requested"),
    "stopped": ("#7f7f7f", "stopped"),
    "disk_warning": ("#8c564b", "disk warning"),
    "pruned": ("#8c564b", "pruned"),
    "replay_check": ("#17becf", "replay check"),
    "gave_up": ("#000000", "gave up"),
    "finished_without_checkpoint": ("#000000", "finished without checkpoint"),
}
DEFAULT_STYLE = ("#bcbd22", "other")
MAX_LABELLED_FAULTS = 40  # above this, markers are drawn without their table numbers
_FLOAT = re.compile(r"(-?\d+\.\d)\d+")
_ATTRIBUTE = re.compile(r'( [\w:-]+=")([^"]*)"')
_METADATA = re.compile(r"<metadata>.*?</metadata>", re.DOTALL)
_REFERENCE = re.compile(r"(?:url\(#|href=\"#)([^)\"]+)")
_ID = re.compile(r' id="([^"]+)"')
_FONT_FAMILY = re.compile(r"font-family: [^;\"]*;? ?")
_NO_ROTATION = re.compile(r' transform="rotate\(-?0 [^)]*\)"')
_GROUP_TAG = re.compile(r"</g>|<g\b[^>]*>")


def downsample(points: list[tuple[float, float]], max_points: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most ``max_points`` (x, y): the mean of equal runs of consecutive points."""
    if len(points) <= max_points:
        return list(points)
    out = []
    for i in range(max_points):
        chunk = points[i * len(points) // max_points:(i + 1) * len(points) // max_points]
        if chunk:
            out.append((sum(p[0] for p in chunk) / len(chunk), sum(p[1] for p in chunk) / len(chunk)))
    return out


# Fault numbers above the curves: two closer than LABEL_GAP (a fraction of the axis width, about
# the width of a two-digit label) go on separate rows, LABEL_ROW_PT points apart, never on top of
# each other (two crashes a few steps apart in a run of thousands).
LABEL_GAP = 0.03
LABEL_ROW_PT = 8


def label_rows(xs: list[float], span: float, min_gap: float = LABEL_GAP) -> list[int]:
    """The row of each label at ``xs`` (0 = the lowest): greedily, in order of x, the lowest row
    whose previous label is at least ``min_gap * span`` to the left."""
    gap = min_gap * span if span > 0 else 0.0
    rows: list[int] = [0] * len(xs)
    last_on_row: list[float] = []
    for index in sorted(range(len(xs)), key=lambda i: xs[i]):
        x = xs[index]
        for row, last in enumerate(last_on_row):
            if x > last and x - last >= gap:
                last_on_row[row] = x
                rows[index] = row
                break
        else:
            rows[index] = len(last_on_row)
            last_on_row.append(x)
    return rows


def _fault_style(kind: str) -> tuple[str, str]:
    return FAULT_STYLE.get(kind, DEFAULT_STYLE)


def _time_axis(history: RunHistory) -> tuple[float, float, str]:
    """(origin, divisor, unit) for elapsed wall time on the x axis."""
    origin = history.start_time or 0.0
    end = max([origin] + [r.time for r in history.steps] + [f.time for f in history.faults])
    span = end - origin
    if span >= 3 * 3600:
        return origin, 3600.0, "hours"
    if span >= 180:
        return origin, 60.0, "minutes"
    return origin, 1.0, "seconds"


def _panels(history: RunHistory) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(y label, [(metric key, legend, style)]) for each panel that has data."""
    wanted = [
        ("loss", [("loss", "train loss", "line"), ("val_loss", "val loss", "points")]),
        ("learning rate", [("lr", "lr", "line")]),
        ("tokens/s", [("tokens_per_s", "tokens/s", "line")]),
        ("HellaSwag acc", [("hellaswag", "HellaSwag acc_norm", "points")]),
    ]
    present = {key for r in history.steps for key in r.values}
    return [(label, [s for s in series if s[0] in present]) for label, series in wanted
            if any(s[0] in present for s in series)]


def _draw(history: RunHistory, against: str) -> str:
    """One figure (train/val loss, lr, tokens/s, HellaSwag) against "step" or "time", as SVG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = _panels(history)
    if not panels:
        return "<p class='empty'>No training steps recorded yet (metrics.jsonl is empty).</p>"
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "gpt2sup", "font.size": 9,
                         "path.simplify": True})
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.9 * len(panels) + 0.6), sharex=True, squeeze=False)
    axes = [row[0] for row in axes]
    origin, divisor, unit = _time_axis(history)

    def x_of(step: int, when: float) -> float:
        return step if against == "step" else (when - origin) / divisor

    labelled = len(history.faults) <= MAX_LABELLED_FAULTS
    spans = _lost_work_spans(history, against, origin, divisor)
    fault_lines = _fault_xs_by_colour(history, against, origin, divisor)
    for ax, (ylabel, series) in zip(axes, panels):
        _plot_series(ax, history, series, against, x_of)
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend(loc="upper right", fontsize=8)
        _shade(ax, spans)
        for colour, xs in fault_lines.items():
            ax.plot([v for x in xs for v in (x, x, math.nan)], [v for _ in xs for v in (0, 1, math.nan)],
                    color=colour, linewidth=0.9, alpha=0.8, transform=ax.get_xaxis_transform())
    rows = _number_faults(axes[0], history, against, origin, divisor) if labelled else 1
    axes[-1].set_xlabel("step" if against == "step" else f"wall time since the first launch ({unit})")
    _fault_legend(fig, history)
    top_margin = max(0.75, 0.97 - 0.03 * (rows - 1)) if labelled and history.faults else 1
    fig.tight_layout(rect=(0, 0.04 if history.faults else 0, 1, top_margin))
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return _compact_svg(buffer.getvalue())


def _plot_series(ax: Any, history: RunHistory, series: Any, against: str,
                 x_of: Callable[[int, float], float]) -> None:
    """Each (key, legend, style) of one panel as a line, downsampled; against time, broken at gaps."""
    for key, legend, style in series:
        points = downsample([(x_of(s, t), v) for s, t, v in history.series(key)])
        if against == "time":
            points = _break_gaps(points)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if style == "line":
            ax.plot(xs, ys, linewidth=1.0, label=legend, color="#1f77b4" if key == "loss" else None)
        else:
            ax.plot(xs, ys, "o-", markersize=3, linewidth=0.8, label=legend, color="#e377c2")


def _lost_work_spans(history: RunHistory, against: str, origin: float, divisor: float) -> list[tuple[float, float]]:
    """Lost work: the steps trained twice (against step) or the time from the last progress to
    the failed step regained (against time). Shaded as one path per panel, however many there are:
    the page stays small."""
    spans = []
    for recovery in history.recoveries:
        if against == "step":
            if recovery.redone_steps is not None:
                spans.append((recovery.redone_steps[0] - 0.5, recovery.redone_steps[1] + 0.5))
        else:
            spans.append(((recovery.progress_at - origin) / divisor, (recovery.regained_at - origin) / divisor))
    return spans


def _fault_xs_by_colour(history: RunHistory, against: str, origin: float, divisor: float) -> dict[str, list[float]]:
    """Where each fault falls on the x axis, grouped by its kind's colour (one path per kind);
    against step, a fault with no step is left out."""
    by_colour: dict[str, list[float]] = {}
    for fault in history.faults:
        if against == "step" and fault.step is None:
            continue
        x = fault.step if against == "step" else (fault.time - origin) / divisor
        by_colour.setdefault(_fault_style(fault.kind)[0], []).append(x)
    return by_colour


def _number_faults(top: Any, history: RunHistory, against: str, origin: float, divisor: float) -> int:
    """Number each fault above the top panel, stacking labels that would overlap; the rows used."""
    numbered = [(number, fault, fault.step if against == "step" else (fault.time - origin) / divisor)
                for number, fault in enumerate(history.faults, 1)
                if not (against == "step" and fault.step is None)]
    low, high = top.get_xlim()
    levels = label_rows([x for _, _, x in numbered], high - low, LABEL_GAP)
    for (number, fault, x), level in zip(numbered, levels, strict=True):
        top.annotate(str(number), (x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 2 + LABEL_ROW_PT * level),
                     textcoords="offset points", ha="center", va="bottom", fontsize=7,
                     color=_fault_style(fault.kind)[0])
    return max(levels, default=0) + 1


def _shade(ax: Any, spans: list[tuple[float, float]]) -> None:
    """Every (x0, x1) span as one full-height band, all in a single path."""
    if not spans:
        return
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as DrawnPath

    vertices, codes = [], []
    for x0, x1 in spans:
        vertices += [(x0, 0), (x1, 0), (x1, 1), (x0, 1), (x0, 0)]
        codes += [DrawnPath.MOVETO, DrawnPath.LINETO, DrawnPath.LINETO, DrawnPath.LINETO, DrawnPath.CLOSEPOLY]
    ax.add_patch(PathPatch(DrawnPath(vertices, codes), facecolor="#d62728", alpha=0.12, linewidth=0,
                           transform=ax.get_xaxis_transform()))


def _break_gaps(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A NaN between points much further apart in time than usual, so no line is drawn across the
    time a failure cost (the steps before it and the steps re-done after it are both real)."""
    if len(points) < 3:
        return points
    gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(points))
    limit = 5 * gaps[len(gaps) // 2]
    out = [points[0]]
    for a, b in itertools.pairwise(points):
        if limit > 0 and b[0] - a[0] > limit:
            out.append((a[0], math.nan))
        out.append(b)
    return out


def _fault_legend(fig: Any, history: RunHistory) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    seen: dict[str, str] = {}
    for fault in history.faults:
        colour, label = _fault_style(fault.kind)
        seen.setdefault(label, colour)
    handles = [Line2D([0], [0], color=colour, linewidth=1.2, label=label) for label, colour in seen.items()]
    if history.recoveries:
        handles.append(Patch(color="#d62728", alpha=0.12, label="lost work (re-done)"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)


def _compact_svg(svg: str) -> str:
    """Inline-ready SVG at about a third of matplotlib's size, drawing the same: no XML prolog,
    DOCTYPE or metadata, no ids nothing refers to, no indentation, coordinates to one decimal."""
    start = svg.find("<svg")
    svg = svg[start:] if start >= 0 else svg
    svg = _METADATA.sub("", svg)
    referenced = set(_REFERENCE.findall(svg))
    svg = _ID.sub(lambda m: m.group(0) if m.group(1) in referenced else "", svg)
    svg = _ATTRIBUTE.sub(lambda m: m.group(1) + _FLOAT.sub(r"\1", m.group(2)) + '"', svg)  # not the labels
    svg = _FONT_FAMILY.sub("", svg)  # the page's CSS gives svg text one font
    svg = _NO_ROTATION.sub("", svg)
    svg = re.sub(r"\s*\n\s*", " ", svg)
    svg = re.sub(r">\s+<", "><", svg)
    svg = re.sub(r" ([MLCQZz]) ", r"\1", svg)  # path data: "M 1 2 L 3 4" -> "M1 2L3 4"
    return _unwrap_bare_groups(svg)


def _unwrap_bare_groups(svg: str) -> str:
    """Drop every ``<g>`` without attributes with its ``</g>``: such a group changes nothing drawn."""
    out: list[str] = []
    bare: list[bool] = []  # for each open <g>: was it bare?
    position = 0
    for match in _GROUP_TAG.finditer(svg):
        out.append(svg[position:match.start()])
        tag = match.group(0)
        if tag == "</g>":
            if not (bare.pop() if bare else False):
                out.append(tag)
        elif tag.endswith("/>"):
            out.append(tag)
        else:
            bare.append(tag == "<g>")
            if tag != "<g>":
                out.append(tag)
        position = match.end()
    out.append(svg[position:])
    return "".join(out)


# --- the page ---------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1000px;color:#222}
h1{font-size:1.4em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:.9em}table{border-collapse:collapse;font-size:.85em;width:100%}
td,th{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.k{display:inline-block;width:9px;height:9px;border-radius:2px;margin-right:5px}
.summary td:first-child{width:32%;color:#555}svg{max-width:100%;height:auto}svg text{font-family:"DejaVu Sans",Verdana,Arial,sans-serif}.bad{color:#d62728}.ok{color:#2ca02c}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _clock(when: float, with_date: bool = True) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC" if with_date else "%H:%M:%S", time.gmtime(when))


def _size(n: int) -> str:
    """Decimal MB, as ``status``, ``verify`` and docs/cli.md say: one file has one size everywhere."""
    from supervisor.views.dashboard import format_bytes

    return format_bytes(n)


def _summary_rows(history: RunHistory) -> list[tuple[str, str]]:
    g = history.goodput
    steps = history.steps
    rows = [("state", history.state or ("bare worker run (no supervisor)" if not history.sessions else "unknown"))]
    if steps:
        done = steps[-1].step + 1
        rows.append(("steps", f"{done}" + (f" of {history.max_steps}" if history.max_steps else "")))
        last = steps[-1].values
        if "loss" in last:
            rows.append(("last train loss", f"{last['loss']:.4f} (step {steps[-1].step})"))
        val = history.series("val_loss")
        if val:
            rows.append(("last val loss", f"{val[-1][2]:.4f} (step {val[-1][0]})"))
        hella = history.series("hellaswag")
        if hella:
            rows.append(("last HellaSwag acc_norm", f"{hella[-1][2]:.4f} (step {hella[-1][0]})"))
    rows += [
        ("wall time (supervised)", f"{format_seconds(g.wall_s)} in {len(history.sessions)} session(s)"),
        ("useful training time", format_seconds(g.useful_s)),
        ("time lost to faults", (f"{format_seconds(g.lost_s)}: detection {format_seconds(g.detection_s)}, "
                                f"restart {format_seconds(g.restart_s)}, re-done steps {format_seconds(g.redo_s)}")),
        ("goodput (useful / wall)", f"{g.ratio:.1%}" if g.ratio is not None else "-"),
        ("other overhead (start-up, evaluations, saves)",
         format_seconds(max(0.0, g.wall_s - g.useful_s - g.lost_s))),
    ]
    kinds = [f.kind for f in history.faults]
    counts = {k: kinds.count(k) for k in ("crashed", "hung", "quarantined", "restarted", "stop_requested", "disk_warning")}
    rows.append(("faults", ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()) or "none"))
    redone = sum(span[1] - span[0] + 1 for r in history.recoveries if (span := r.redone_steps))
    rows.append(("steps re-done", str(redone)))
    return rows


def _incident_links(fault: Fault, log_dir: Path, out_dir: Path) -> str:
    if not fault.incident:
        return ""
    base = Path(os.path.relpath(log_dir / fault.incident, out_dir))
    links = [f'<a href="{_e(base.as_posix())}/">{_e(fault.incident)}</a>']
    links += [f'<a href="{_e((base / name).as_posix())}">{_e(name)}</a>' for name in fault.incident_files]
    return "<br>stacks: " + " · ".join(links)


def _fault_table(history: RunHistory, out_dir: Path) -> str:
    if not history.faults:
        return "<p>No faults: every attempt ran to its end.</p>"
    origin = history.start_time or history.faults[0].time
    rows = []
    for number, fault in enumerate(history.faults, 1):
        colour, label = _fault_style(fault.kind)
        result = ""
        if fault.ok is not None:
            result = " <b class='ok'>bitwise equal</b>" if fault.ok else " <b class='bad'>MISMATCH</b>"
        rows.append(
            f"<tr><td class=num>{number}</td><td title='{_e(_clock(fault.time))}'>{_e(_clock(fault.time, False))} "
            f"<span class=sub>+{format_seconds(fault.time - origin)}</span></td>"
            f"<td><span class=k style='background:{colour}'></span>{_e(label)}</td>"
            f"<td class=num>{_e(fault.attempt if fault.attempt is not None else '-')}</td>"
            f"<td class=num>{_e(fault.step if fault.step is not None else '-')}</td>"
            f"<td>{_e(fault.message)}{result}{_incident_links(fault, history.log_dir, out_dir)}</td></tr>")
    return ("<table><tr><th>#</th><th>time (UTC)</th><th>kind</th><th>attempt</th><th>step</th><th>what happened</th></tr>"
            + "".join(rows) + "</table>")


def _recovery_table(history: RunHistory) -> str:
    if not history.recoveries:
        return "<p>No crash or hang: nothing had to be recovered.</p>"
    rows = []
    for r in history.recoveries:
        redone = f"{r.redone_steps[0]}–{r.redone_steps[1]}" if r.redone_steps else "none"
        resumed = "from scratch" if r.resumed_step == -1 else (f"step {r.resumed_step}" if r.resumed_step is not None else "not relaunched")
        rows.append(
            f"<tr><td>{_e(r.kind)} (attempt {_e(r.attempt)})</td><td class=num>{_e(r.failed_step if r.failed_step is not None else '-')}</td>"
            f"<td>{_e(resumed)}</td><td class=num>{format_seconds(r.detection_s)}</td><td class=num>{format_seconds(r.restart_s)}</td>"
            f"<td class=num>{_e(redone)}</td><td class=num>{format_seconds(r.redo_s)}</td><td class=num>{format_seconds(r.lost_s)}</td></tr>")
    return ("<table><tr><th>failure</th><th>at step</th><th>resumed</th><th>detection</th><th>restart</th>"
            "<th>steps re-done</th><th>re-doing</th><th>lost</th></tr>" + "".join(rows) + "</table>")


def _checkpoint_table(history: RunHistory) -> str:
    if not history.checkpoints:
        return "<p>No checkpoint on disk.</p>"
    rows = []
    for c in history.checkpoints:
        val = f"{c.val_loss:.4f}" if c.val_loss is not None else "-"
        cls = " class=bad" if c.quarantined else ""
        rows.append(f"<tr{cls}><td>{_e(c.name)}</td><td class=num>{_e(c.step if c.step is not None else '-')}</td>"
                    f"<td class=num>{_e(_size(c.size_bytes))}</td><td class=num>{val}</td><td>{_e(c.validation)}</td></tr>")
    return ("<table><tr><th>file</th><th>step</th><th>size</th><th>val loss</th><th>validation</th></tr>"
            + "".join(rows) + "</table>")


def report_data(history: RunHistory) -> dict[str, Any]:
    """What the page shows, as data (downsampled curves, every fault, the summary)."""
    origin = history.start_time or 0.0
    curves = {}
    for key in ("loss", "val_loss", "lr", "tokens_per_s", "hellaswag"):
        series = history.series(key)
        if series:
            steps = downsample([(s, v) for s, _, v in series])
            times = downsample([(t, v) for _, t, v in series])
            curves[key] = {"step": [round(s, 1) for s, _ in steps], "value": [float(f"{v:.5g}") for _, v in steps],
                           "seconds": [round(t - origin, 1) for t, _ in times]}
    return {
        "log_dir": str(history.log_dir),
        "start_time": origin,  # curves' "seconds" count from here (Unix time)
        "goodput": {**asdict(history.goodput), "ratio": history.goodput.ratio},
        "faults": [{k: v for k, v in asdict(f).items() if v not in (None, [])} for f in history.faults],
        "recoveries": [{**asdict(r), "redone_steps": r.redone_steps, "detection_s": round(r.detection_s, 2),
                        "restart_s": round(r.restart_s, 2), "redo_s": round(r.redo_s, 2), "lost_s": round(r.lost_s, 2)}
                       for r in history.recoveries],
        "checkpoints": [asdict(c) for c in history.checkpoints],
        "curves": curves,
    }


def render_report(history: RunHistory, out_path: Path) -> str:
    """The whole page as one string; links to incident files are relative to ``out_path``."""
    out_dir = out_path.resolve().parent
    summary = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in _summary_rows(history))
    data = json.dumps(report_data(history), separators=(",", ":"), default=str).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gpt2sup report: {_e(history.log_dir.name)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>gpt2sup run report</h1>
<div class="sub">{_e(history.log_dir)} · first launch {_e(_clock(history.start_time) if history.start_time else "-")} · written {_e(_clock(time.time()))} by <code>gpt2sup report</code> · times are UTC</div>
<h2>Summary</h2>
<table class="summary">{summary}</table>
<h2>Training curves and faults, against step</h2>
<p class="sub">Vertical lines are the faults below (numbered as in the table); shaded steps were trained twice because of a failure.</p>
<figure id="by-step">{_draw(history, "step")}</figure>
<h2>Against wall time</h2>
<p class="sub">Shaded: time from a failed rank's last progress until the run had trained that step again.</p>
<figure id="by-time">{_draw(history, "time")}</figure>
<h2>Faults</h2>
{_fault_table(history, out_dir)}
<h2>What each failure cost</h2>
{_recovery_table(history)}
<h2>Checkpoints</h2>
{_checkpoint_table(history)}
<script type="application/json" id="gpt2sup-report-data">{data}</script>
</body></html>
"""

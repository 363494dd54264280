"""``report.png``: the metric against each swept key, one panel per key, one line per value of the other keys."""

from __future__ import annotations

from typing import Any

from bapose.report.values import DEFAULT, fmt_value, ident, is_number, short

__all__ = ["figure"]


def figure(report: Any) -> Any:
    """A matplotlib ``Figure`` of a :class:`bapose.report.table.SweepReport`: the metric against each swept key
    (numeric keys on a numeric axis, others in the order the sweep ran them), one line per value of the other swept
    keys, error bars = std over the folded seeds, the best row starred."""
    from matplotlib.figure import Figure

    keys = report.keys or [""]
    cols = min(len(keys), 3)
    nrows = -(-len(keys) // cols)
    fig = Figure(figsize=(5.6 * cols, 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes, keys, strict=False):
        if key:
            _panel(ax, report, key)
        else:
            _bars(ax, report)
    fig.suptitle(f"{report.metric} ({'mean ± std over ' + ', '.join(report.folded) if report.folded else 'one job'}"
                 f" per point; ★ best)", fontsize=11)
    return fig


def _rank(jobs: list[Any], key: str, value: Any) -> tuple[int, Any]:
    """Plot order of a swept value: numbers by value; others (dilation lists, model names) in the order the sweep
    ran them."""
    if is_number(value):
        return (0, float(value))
    for i, j in enumerate(jobs):
        if j.overrides is not None and ident(j.overrides.get(key, DEFAULT)) == ident(value):
            return (1, i)
    return (2, fmt_value(value))


def _bars(ax: Any, report: Any) -> None:
    """Nothing swept: one bar per configuration (a single one)."""
    rows = [r for r in report.rows if report.metric in r.stats]
    ax.bar(range(len(rows)), [r.stats[report.metric][0] for r in rows],
           yerr=[r.stats[report.metric][1] or 0 for r in rows], color="tab:blue", capsize=4)
    ax.set_xticks(range(len(rows)), ["all jobs"] * len(rows))
    ax.set_ylabel(report.metric)


def _panel(ax: Any, report: Any, key: str) -> None:
    import matplotlib

    colors = matplotlib.colormaps["tab10"]
    metric = report.metric
    rows = [r for r in report.rows if metric in r.stats]
    at = lambda r: r.values.get(key, DEFAULT)  # noqa: E731
    values = list({ident(at(r)): at(r) for r in rows}.values())
    numeric = all(is_number(v) for v in values)
    values.sort(key=lambda v: _rank(report.jobs, key, v))
    pos = {ident(v): (float(v) if numeric else i) for i, v in enumerate(values)}
    others = [k for k in report.keys if k != key]
    lines: dict[str, list[Any]] = {}
    for r in rows:
        lines.setdefault(", ".join(fmt_value(r.values.get(k, DEFAULT)) for k in others), []).append(r)
    ordered = sorted(lines.items(), key=lambda kv: [_rank(report.jobs, k, kv[1][0].values.get(k, DEFAULT))
                                                     for k in others])
    for i, (label, members) in enumerate(ordered):
        members = sorted(members, key=lambda r: pos[ident(at(r))])
        x = [pos[ident(at(r))] for r in members]
        y = [r.stats[metric][0] for r in members]
        err = [r.stats[metric][1] or 0.0 for r in members]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=4, lw=1.8, color=colors(i % 10), label=label or None)
        for r, xi, yi in zip(members, x, y, strict=True):
            if r.best:
                ax.plot([xi], [yi], marker="*", ms=18, color="gold", mec="black", zorder=5)
    ax.set_xticks([pos[ident(v)] for v in values], [fmt_value(v) for v in values],
                  rotation=0 if numeric or len(values) < 4 else 20)
    if not numeric:
        ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {short(key)}", fontsize=10)
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=8, title=", ".join(short(k) for k in others), title_fontsize=8)

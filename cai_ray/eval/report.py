"""The eval stage's report: RUN_DIR/eval/report.md (tables) and report.html (the same tables, the
plots embedded as PNG data, the run's per-stage figures and plots, side-by-side example answers),
one self-contained file to open in a browser or attach to an issue."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _ci(r: dict, key: str = "rate", digits: int = 3) -> str:
    return f"{_f(r[key], digits)} [{_f(r['low'], digits)}, {_f(r['high'], digits)}]"


# -- tables (rows of cells), shared by markdown and html -------------------------------------------
def refusal_table(result: dict, pols) -> tuple[list[str], list[list[str]]]:
    head = ["set", "kind", "n"] + [f"{p.name} refusal [95% CI]" for p in pols] + \
        [f"{p.name} partial / empty / chars" for p in pols]
    rows = []
    for name, s in result["refusals"]["sets"].items():
        per = s["policies"]
        rows.append([name, s["kind"], str(s["n"])] +
                    [_ci(per[p.name]) for p in pols] +
                    [f"{per[p.name].get('partial', 0)} / {per[p.name]['empty']} / "
                     f"{per[p.name]['length_chars']['mean']:.0f}" for p in pols])
    return head, rows


def difference_table(result: dict, pols) -> tuple[list[str], list[list[str]]]:
    head = ["measure", "difference", "95% CI (paired bootstrap)", "excludes 0", "n"]
    names = {"harmful": "refusal, all harmful prompts", "benign": "refusal, all benign prompts",
             "xstest_safe": "over-refusal, XSTest safe"}
    rows = [[f"{names.get(k, k)}: {' - '.join(d['of'])}", _f(d["difference"]),
             f"[{_f(d['low'])}, {_f(d['high'])}]", "yes" if d["excludes_zero"] else "no",
             str(d["n"])] for k, d in result["refusals"]["pooled"].items()]
    for kind, steps in result["refusals"].get("steps", {}).items():
        rows += [[f"{names.get(kind, kind)}: {' - '.join(d['of'])} (what the stage added)",
                  _f(d["difference"]), f"[{_f(d['low'])}, {_f(d['high'])}]",
                  "yes" if d["excludes_zero"] else "no", str(d["n"])] for d in steps]
    return head, rows


def elo_table(result: dict, pols) -> tuple[list[str], list[list[str]]]:
    head = ["policy", "step", "harmlessness Elo [95% CI]", "helpfulness Elo [95% CI]"]
    rows = [[p.name, str(p.step), _ci(result["elo"]["harmless"]["policies"][p.name], "elo", 0),
             _ci(result["elo"]["helpful"]["policies"][p.name], "elo", 0)] for p in pols]
    return head, rows


def win_table(result: dict) -> tuple[list[str], list[list[str]]]:
    head = ["judged on", "comparison", "win rate [95% CI]", "soft win rate [95% CI]", "ties", "n"]
    rows = []
    for kind in ("harmless", "helpful"):
        for name, w in result["elo"][kind]["win_rates"].items():
            rows.append([kind, name.replace("_vs_", " vs "), _ci(w["hard"]),
                         _ci(w["soft"], "mean"), str(w["ties"]), str(w["hard"]["n"])])
    return head, rows


def attribution_table(result: dict) -> tuple[list[str], list[list[str]]]:
    head = ["principle", "drawn (preferences)", "agrees with ensemble", "position bias",
            "revisions (sl_cai)", "flagged"]
    rows = [[a["principle"], str(a["drawn"]), _f(a["agreement"]), _f(a["position_bias"]),
             str(a["revisions"]), _f(a["flagged_share"])] for a in result["attribution"]]
    return head, rows


def stage_table(run_path: Path, key_figures: dict[str, tuple]) -> tuple[list[str], list[list[str]]]:
    """The run's per-stage key figures: key_figures, stage -> its keys in its result.json (the
    stages in the order data flows, cai_ray/stages registry)."""
    rows = []
    for stage, keys in key_figures.items():
        if stage == "eval":
            continue
        res = run_path / stage / "result.json"
        if not res.exists():
            continue
        data = json.loads(res.read_text())
        figs = ", ".join(f"{k} {_f(data.get(k))}" for k in keys if k in data)
        secs = data.get("timing/total_s") or data.get("timing/stage_s")
        rows.append([stage, figs, _f(secs, 0) if secs else "-"])
    return ["stage", "key figures", "seconds"], rows


# -- plots ----------------------------------------------------------------------------------------
def plot_refusals(result: dict, pols, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sets = [k for k in ("all_harmful", "xstest-safe", "helpful", "red_team")
            if k in result["refusals"]["sets"]]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(1, len(pols))
    for k, p in enumerate(pols):
        rs = [result["refusals"]["sets"][s]["policies"][p.name] for s in sets]
        x = np.arange(len(sets)) + k * width
        ax.bar(x, [r["rate"] for r in rs], width, label=p.name,
               yerr=[[max(0.0, r["rate"] - r["low"]) for r in rs],
                     [max(0.0, r["high"] - r["rate"]) for r in rs]],
               capsize=3)
    ax.set_xticks(np.arange(len(sets)) + width * (len(pols) - 1) / 2)
    ax.set_xticklabels(["harmful (all)" if s == "all_harmful" else s for s in sets])
    ax.set(ylim=(0, 1), ylabel="refusal rate (95% CI)",
           title="Refusals: higher is better on harmful, lower on benign")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_elo(result: dict, pols, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    steps = [p.step for p in pols]
    for kind, colour in (("harmless", "tab:green"), ("helpful", "tab:blue")):
        es = [result["elo"][kind]["policies"][p.name] for p in pols]
        ax.errorbar(steps, [e["elo"] for e in es], capsize=3, marker="o", color=colour,
                    yerr=[[max(0.0, e["elo"] - e["low"]) for e in es],
                          [max(0.0, e["high"] - e["elo"]) for e in es]],
                    label=f"{kind}ness Elo")
    ax.set_xticks(steps)
    ax.set_xticklabels([p.name for p in pols])
    ax.axhline(1000, color="grey", ls="--", lw=1)
    ax.set(xlabel="policy, in training order", ylabel="Elo (base = 1000, 95% CI)",
           title="Judge-based Elo along training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- markdown and html ----------------------------------------------------------------------------
def _md(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
                              for r in rows])


def _html_table(head, rows, cls: str) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">' \
           f"<figcaption>{html.escape(alt)}</figcaption></figure>"


def check_line(rec: dict) -> str:
    """A judge check (judge.gate) as the report's opening line."""
    from cai_ray.judges.gate import describe

    return f"{rec.get('stage', 'judge')}: {describe(rec)} (judge.gate: {rec.get('gate')})"


def examples(pols, answers, red, helpful, n: int) -> list[dict]:
    picks = red[:n] + helpful[:max(1, n // 2)] if n else []
    return [{"prompt": p.prompt, "answers": {pol.name: answers[pol.name][p.id] for pol in pols}}
            for p in picks]


def write(out: Path, run_path: Path, result: dict, pols, answers, red, helpful, n_examples: int,
          title: str | None = None, key_figures: dict[str, tuple] | None = None):
    """report.md and report.html in out; key_figures: the stage table's (stage -> keys)."""
    plot_refusals(result, pols, out / "refusals.png")
    plot_elo(result, pols, out / "elo.png")
    tables = [("Refusals on held-out prompts (no judge)", refusal_table(result, pols), "refusals"),
              ("Differences in refusal rates", difference_table(result, pols), "difference"),
              ("Harmlessness and helpfulness Elo (judge)", elo_table(result, pols), "elo"),
              ("Win rates of the final policy (judge)", win_table(result), "wins"),
              ("Per-principle attribution", attribution_table(result), "attribution"),
              ("Stages of the run", stage_table(run_path, key_figures or {}), "stages")]
    ex = examples(pols, answers, red, helpful, n_examples)
    title = title or f"cai-ray evaluation: {run_path.name}"
    note = (f"Policies: {', '.join(p.name for p in pols)}. Judge: {result['judge']}. Intervals "
            f"are 95%: Wilson for rates, bootstrap over prompts for Elo, soft win rates and "
            f"differences. Refusals by cai_ray/eval/refusals.py (a phrase detector).")
    checks = [check_line(c) for c in result.get("judge_checks", [])]
    md = [f"# {title}", ""] + [f"**{c}**\n" for c in checks] + [note, ""]
    for name, (head, rows), _ in tables:
        md += [f"## {name}", "", _md(head, rows) if rows else "(none)", ""]
    md += ["## Example answers", ""]
    for e in ex:
        md += [f"**Prompt:** {e['prompt']}", ""]
        md += [f"- *{k}*: {v[:400]}" for k, v in e["answers"].items()] + [""]
    (out / "report.md").write_text("\n".join(md))
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="check">{html.escape(c)}</p>' for c in checks]
    parts += [f"<p>{html.escape(note)}</p>",
             _img(out / "refusals.png", "Refusal rates by policy and prompt set"),
             _img(out / "elo.png", "Harmlessness and helpfulness Elo by policy")]
    for name, (head, rows), cls in tables:
        parts += [f"<h2>{html.escape(name)}</h2>",
                  _html_table(head, rows, cls) if rows else "<p>(none)</p>"]
    for png in sorted(run_path.glob("*/*.png")):
        if png.parent.name != "eval":
            parts.append(_img(png, f"{png.parent.name}: {png.stem}"))
    parts.append("<h2>Example answers</h2>")
    for e in ex:
        cols = "".join(f"<td><b>{html.escape(k)}</b><pre>{html.escape(v)}</pre></td>"
                       for k, v in e["answers"].items())
        parts.append(f'<p class="prompt">{html.escape(e["prompt"])}</p>'
                     f'<table class="examples"><tr>{cols}</tr></table>')
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
             "th{background:#f3f3f3}pre{white-space:pre-wrap;max-width:380px;margin:0}"
             "img{max-width:100%}.prompt{font-weight:bold;margin-top:1.5em}"
             ".check{border-left:4px solid #c60;padding:4px 10px;background:#fff6ec}")
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")

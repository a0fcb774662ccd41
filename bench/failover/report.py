#!/usr/bin/env python3
"""Failover benchmark report: markdown table + PNG plots from larder-faults results.

Reads <results>/<label>/result.json (+ history.jsonl for the timeline) written by
`larder-faults bench`, prints a markdown table, draws the plots and, with --doc, replaces the
`## Failover` section of docs/benchmarks.md (other sections are left untouched).
"""
import argparse
import json
import os
import re
import sys

ORDER = ["larder", "larder-unaligned", "larder-vip", "patroni-defaults", "patroni-aggressive", "pg-auto-failover"]


def load(results):
    out = []
    for label in sorted(os.listdir(results), key=lambda l: (ORDER.index(l) if l in ORDER else 99, l)):
        p = os.path.join(results, label, "result.json")
        if os.path.isfile(p):
            with open(p) as f:
                out.append(json.load(f))
    return out


def fmt(x, unit="s"):
    return "–" if x is None else f"{x:.2f} {unit}"


def fmt_p(x, s, r):
    """A percentile; at or above the shortest unrecovered trial it is only a lower bound."""
    lo = s.get("no_recovery_min_s")
    if x is not None and lo is not None and x >= lo:
        return f"> {r.get('resume_deadline_s', lo):.0f} s (no recovery)"
    return fmt(x)


def table(results):
    lines = [
        "| system | scenario | trials | p50 | p90 | max | per frontend p50 / max | acked writes lost | agent idle CPU | agent idle RSS |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        idle = r.get("idle") or {}
        cpu = f"{idle['cpu_percent']:.2f} %" if idle else "–"
        rss = f"{idle['rss_bytes'] / 1048576:.1f} MB" if idle else "–"
        for s in r["scenarios"]:
            name = r["label"] + (f" ({r['build']} build)" if r.get("build") in ("debug", "release") else "")
            trials = f"{s['trials']}" + (f" (+{s['void_trials']} void)" if s.get("void_trials") else "")
            if s.get("no_recovery"):
                trials += f", {s['no_recovery']} without recovery"
            per_fe = ", ".join(
                f"fe{f['frontend']} {fmt(f['p50_s'])} / {fmt(f['max_s'])}" for f in s.get("frontends") or []
            ) or "–"
            lines.append(
                f"| {name} | {s['scenario']} | {trials} | {fmt_p(s['p50_s'], s, r)} | {fmt_p(s['p90_s'], s, r)} "
                f"| {fmt_p(s['max_s'], s, r)} | {per_fe} | {r['lost']} | {cpu} | {rss} |"
            )
    notes = []
    for r in results:
        w = r["writes"]
        notes.append(
            f"- {r['label']}: {w['ok']} writes acknowledged, {w['failed']} failed, {w['unknown']} unknown "
            f"over {r['elapsed_s'] / 60:.1f} min; checker violations: {len(r['violations'])}"
            + (f"; stopped early: {r['error']}" if r.get("error") else "")
        )
        for v in r["violations"]:
            notes.append(f"  - {v['kind']}: {v['message']}")
    if any(s.get("no_recovery") for r in results for s in r["scenarios"]):
        notes.append(
            "- *without recovery*: no write was acknowledged within the deadline after the fault; "
            "the trial counts with the time waited (a lower bound), then the harness restarted the "
            "killed node (and, if the cluster still did not heal, every node) and went on."
        )
    if any(s.get("void_trials") for r in results for s in r["scenarios"]):
        notes.append(
            "- *void*: the switchover command returned success but the same node was still the "
            "leader afterwards (no hand-over happened); such trials are listed, not averaged in."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def plots(results_dir, results, png_prefix):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # 1. windows per trial, per scenario and system
    scen = []
    for r in results:
        for s in r["scenarios"]:
            if s["scenario"] not in scen:
                scen.append(s["scenario"])
    fig, axes = plt.subplots(1, len(scen), figsize=(5 * len(scen), 4), squeeze=False)
    for ax, sc in zip(axes[0], scen):
        data, labels = [], []
        for r in results:
            w = [
                t["window_s"]
                for t in r["trials"]
                if scenario_name(t["scenario"]) == sc
                and not (t["scenario"] == "switchover" and t.get("leader_after") == t["leader_before"])
            ]
            if w:
                data.append(w)
                labels.append(r["label"])
        if data:
            ax.boxplot(data, showfliers=True)
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=15)
            for i, w in enumerate(data, start=1):
                ax.scatter([i] * len(w), w, s=10, alpha=0.6)
        ax.set_title(sc)
        # Seconds (Larder) next to minutes (unrecovered trials) only read on a log scale.
        ax.set_yscale("log")
        ax.set_ylabel("write unavailability window (s, log)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_prefix + "-windows.png", dpi=110)
    plt.close(fig)

    # 2. timeline: which node acknowledged each write, failures, faults
    fig, axes = plt.subplots(len(results), 1, figsize=(14, 2.6 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        hist = os.path.join(results_dir, r["label"], "history.jsonl")
        ok_t, ok_node, bad_t, bad_c, faults = [], [], [], [], []
        if os.path.isfile(hist):
            with open(hist) as f:
                for line in f:
                    e = json.loads(line)
                    if e["type"] == "event":
                        if e["what"] == "fault":
                            faults.append(e["at_us"] / 1e6)
                    elif e["kind"] == "write":
                        t = e["end_us"] / 1e6
                        if e["outcome"] == "ok":
                            ok_t.append(t)
                            ok_node.append(int(e.get("node", "0.0.0.0").split(".")[-1]))
                        else:
                            bad_t.append(t)
                            bad_c.append("tab:red" if e["outcome"] == "failed" else "tab:orange")
        ax.scatter(ok_t, ok_node, s=2, c="tab:green", label="acknowledged (y = node)")
        ax.scatter(bad_t, [0] * len(bad_t), s=2, c=bad_c, label="failed (red) / unknown (orange)")
        for x in faults:
            ax.axvline(x, color="k", lw=0.6, alpha=0.5)
        ax.set_yticks([0] + sorted(set(ok_node)), ["err"] + [f"n{n}" for n in sorted(set(ok_node))])
        route = "to the VIP" if r["label"].endswith("-vip") else "through haproxy"
        ax.set_title(f"{r['label']}: writes every {r['interval_ms']} ms {route} (vertical lines: faults)")
        ax.set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(png_prefix + "-timeline.png", dpi=100)
    plt.close(fig)


def scenario_name(s):
    return {"kill-leader-node": "leader node killed", "kill-leader-postgres": "leader PostgreSQL killed", "switchover": "planned switchover"}.get(s, s)


def update_doc(doc, section, title):
    if os.path.isfile(doc):
        with open(doc) as f:
            text = f.read()
    else:
        text = "# Benchmarks\n"
    m = re.search(r"^## " + re.escape(title) + r"\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if m:
        text = text[: m.start()] + section + text[m.end():]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(doc, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--png-prefix", default=None)
    ap.add_argument("--doc", default=None)
    ap.add_argument("--command", default="bench/failover/run.sh")
    ap.add_argument("--notes", default=None, help="markdown file appended to the section")
    ap.add_argument("--section", default="Failover", help="title of the docs section (## TITLE) to replace")
    a = ap.parse_args()
    results = load(a.results)
    if not results:
        sys.exit(f"no result.json under {a.results}")
    md = table(results)
    print(md)
    if a.png_prefix:
        plots(a.results, results, a.png_prefix)
    if a.doc:
        rel = os.path.relpath(a.png_prefix, os.path.dirname(a.doc)) if a.png_prefix else None
        section = f"## {a.section}\n\n"
        section += f"Command: `{a.command}` (raw results: `{a.results.rstrip('/')}/*/result.json`).\n\n"
        section += md + "\n"
        if rel:
            section += f"![write-unavailability windows]({rel}-windows.png)\n\n![timeline]({rel}-timeline.png)\n\n"
        if a.notes and os.path.isfile(a.notes):
            with open(a.notes) as f:
                section += f.read().rstrip("\n") + "\n\n"
        update_doc(a.doc, section, a.section)


if __name__ == "__main__":
    main()

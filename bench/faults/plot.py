#!/usr/bin/env python3
"""Plot of a fault-suite run (`larder-faults run` / `ci`) from its history.jsonl.

Top: every acknowledged write at the node that acknowledged it, failed and unknown writes at
the bottom, each fault's span (injection to heal) shaded and numbered. Bottom: per fault, the
longest gap between acknowledged writes from its injection to the next fault, against the
availability bound the suite judges "bounded" faults by.

    /opt/larder-bench-venv/bin/python bench/faults/plot.py OUT/larder-faults/history.jsonl \
        --out docs/img/soak.png --bound 9
"""
import argparse
import json
import re


def load(path):
    faults, heals, acked, bad = [], {}, [], []
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            if e["type"] == "event":
                m = re.match(r"#(\d+) (.*)", e["text"])
                if e["what"] == "fault" and m:
                    faults.append((int(m.group(1)), e["at_us"] / 1e6, m.group(2)))
                elif e["what"] == "heal" and m:
                    heals[int(m.group(1))] = e["at_us"] / 1e6
            elif e.get("kind") == "write":
                t = e["end_us"] / 1e6
                if e["outcome"] == "ok":
                    acked.append((t, int(e.get("node", "0.0.0.0").split(".")[-1])))
                else:
                    bad.append((t, e["outcome"]))
    acked.sort()
    return faults, heals, acked, bad


def gaps(faults, acked, end):
    """Longest gap between consecutive acknowledged writes whose later write falls between each
    fault and the next one."""
    times = [t for t, _ in acked]
    out = []
    for i, (k, at, name) in enumerate(faults):
        until = faults[i + 1][1] if i + 1 < len(faults) else end
        best, prev = 0.0, None
        for t in times:
            if t > until:
                break
            if prev is not None and t >= at:
                best = max(best, t - prev)
            prev = t
        out.append((k, name, best))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("history")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bound", type=float, default=9.0, help="availability bound in seconds")
    a = ap.parse_args()
    faults, heals, acked, bad = load(a.history)
    end = max([t for t, _ in acked] + [t for t, _ in bad] + [0.0])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(16, 8), gridspec_kw={"height_ratios": [2, 1]})
    top.scatter([t for t, _ in acked], [n for _, n in acked], s=1, c="tab:green", label="acknowledged (y = node)")
    top.scatter(
        [t for t, _ in bad],
        [0] * len(bad),
        s=1,
        c=["tab:red" if o == "failed" else "tab:orange" for _, o in bad],
        label="failed (red) / unknown (orange)",
    )
    nodes = sorted({n for _, n in acked})
    for k, at, _ in faults:
        top.axvspan(at, heals.get(k, at) + 0.05, color="grey", alpha=0.25)
        top.text(at, (max(nodes) if nodes else 1) + 0.25, str(k), fontsize=6)
    top.set_ylim(-0.5, (max(nodes) if nodes else 1) + 0.6)
    top.set_yticks([0] + nodes, ["err"] + [f"n{n}" for n in nodes])
    top.set_xlim(0, end)
    top.set_xlabel("seconds since start (grey: fault in place, numbered)")
    top.set_title(f"{len(faults)} faults, {len(acked)} writes acknowledged, {len(bad)} failed or unknown")
    top.legend(loc="lower right", fontsize=7, markerscale=6)

    g = gaps(faults, acked, end)
    kinds = sorted({name.split(" (leader")[0] for _, name, _ in g})
    cmap = plt.get_cmap("tab20")
    color = {kind: cmap(i % 20) for i, kind in enumerate(kinds)}
    bottom.bar(
        [k for k, _, _ in g],
        [gap for _, _, gap in g],
        color=[color[name.split(" (leader")[0]] for _, name, _ in g],
    )
    bottom.axhline(a.bound, color="k", lw=0.8, ls="--", label=f"bound {a.bound:.1f} s (bounded faults)")
    bottom.set_xlabel("fault #")
    bottom.set_ylabel("longest write gap (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[kd]) for kd in kinds]
    bottom.legend(handles, kinds, fontsize=6, ncol=4, loc="upper left")
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    print(f"wrote {a.out}: {len(faults)} faults, longest gap {max([x for _, _, x in g] + [0]):.2f} s")


if __name__ == "__main__":
    main()

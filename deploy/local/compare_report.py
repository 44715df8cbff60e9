#!/usr/bin/env python3
"""compare.sh's bookkeeping: one run's JSON/CSV from its log, and the grid's report.

  compare_report.py run --dir RUN_DIR --status ok|diverged --model ... (see run_args)
      reads RUN_DIR/train.log (worker 0's evaluation lines) and RUN_DIR/sharpness.json,
      writes RUN_DIR/run.csv and then RUN_DIR/run.json (last: it marks the run done)
  compare_report.py summary --dir RUN_DIR     one line about a finished run
  compare_report.py report --out OUT          OUT/results.csv, OUT/table.md, OUT/*.png
"""
import argparse
import csv
import glob
import json
import math
import os
import re
import sys

EPOCH = re.compile(
    r"^\[worker 0\] epoch (\d+)/(\d+) test accuracy ([0-9.]+) loss ([0-9.]+) at step (\d+)"
    r"(?: train loss ([0-9.naif]+))?")
FINAL = re.compile(
    r"^\[worker 0\] final test accuracy ([0-9.]+) loss ([0-9.]+) after (\d+) steps in ([0-9.]+) s")
FINAL_TRAIN = re.compile(r"^\[worker 0\] final epoch train loss ([0-9.naif]+)")

SHARPNESS_KEYS = ["top_eigenvalue", "epsilon_sharpness", "noise_ratio_top",
                  "noise_ratio_random", "noise_var_top", "noise_var_mean", "train_loss",
                  "train_accuracy", "grad_norm", "power_iterations", "eigen_residual",
                  "examples"]


def number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def parse_log(path):
    """Per-epoch figures and the final ones from worker 0's lines."""
    epochs, final, final_train = [], None, None
    with open(path, errors="replace") as f:
        for line in f:
            m = EPOCH.match(line)
            if m:
                epochs.append({"epoch": int(m.group(1)), "test_accuracy": float(m.group(3)),
                               "test_loss": float(m.group(4)),
                               "train_loss": number(m.group(6))})
                continue
            m = FINAL.match(line)
            if m:
                final = {"test_accuracy": float(m.group(1)), "test_loss": float(m.group(2)),
                         "steps": int(m.group(3)), "train_seconds": float(m.group(4))}
                continue
            m = FINAL_TRAIN.match(line)
            if m:
                final_train = number(m.group(1))
    return epochs, final, final_train


def cmd_run(a):
    epochs, final, final_train = parse_log(os.path.join(a.dir, "train.log"))
    if a.status == "ok" and final is None:
        sys.exit(f"compare_report.py: no final test accuracy in {a.dir}/train.log")
    if final is not None:
        epochs.append({"epoch": a.epochs, "test_accuracy": final["test_accuracy"],
                       "test_loss": final["test_loss"], "train_loss": final_train})
    # With fresh noise an optimizer step takes two passes (two minibatches): "epoch" is
    # counted in optimizer steps (an epoch's worth of them), so that runs of either timing
    # line up; "data_epoch" is the pass through the data.
    passes = 2 if a.timing == "fresh" else 1
    for e in epochs:
        e["data_epoch"] = e["epoch"]
        e["epoch"] = e["epoch"] / passes
    sharpness = None
    sharp_path = os.path.join(a.dir, "sharpness.json")
    if a.status == "ok":
        with open(sharp_path) as f:
            sharpness = json.load(f)
    run = {
        "id": os.path.basename(os.path.normpath(a.dir)),
        "status": a.status,
        "model": a.model, "global_batch": a.global_batch, "workers": a.workers,
        "per_worker_batch": a.per_worker, "mode": a.mode, "rho": a.rho, "cap": a.cap,
        "noise_timing": a.timing, "seed": a.seed, "epochs_planned": a.epochs, "lr": a.lr,
        "warmup_steps": a.warmup_steps, "quick": bool(a.quick), "commit": a.commit,
        "seconds": a.seconds,
        "final_test_accuracy": final["test_accuracy"] if final else None,
        "final_test_loss": final["test_loss"] if final else None,
        "final_train_loss": final_train,
        "steps": final["steps"] if final else None,
        "epochs": epochs,
        "sharpness": sharpness,
    }
    with open(os.path.join(a.dir, "run.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "data_epoch", "test_accuracy", "test_loss", "train_loss"])
        for e in epochs:
            w.writerow([e["epoch"], e["data_epoch"], e["test_accuracy"], e["test_loss"],
                        e["train_loss"]])
    tmp = os.path.join(a.dir, "run.json.tmp")
    with open(tmp, "w") as f:
        json.dump(run, f, indent=1)
    os.replace(tmp, os.path.join(a.dir, "run.json"))


def cmd_summary(a):
    with open(os.path.join(a.dir, "run.json")) as f:
        r = json.load(f)
    if r["status"] != "ok":
        print(f"{r['status']}")
        return
    s = r["sharpness"]
    print(f"test accuracy {r['final_test_accuracy']:.4f} loss {r['final_test_loss']:.4f}, "
          f"top eigenvalue {s['top_eigenvalue']:.4g}, eps-sharpness "
          f"{s['epsilon_sharpness']:.4g}, noise ratio {s['noise_ratio_top']:.3g}")


def load_runs(out):
    runs = []
    for path in sorted(glob.glob(os.path.join(out, "runs", "*", "run.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    return runs


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None, len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)  # sample std over seeds
    return m, math.sqrt(var), len(values)


def group_key(r):
    return (r["model"], r["global_batch"], r["mode"], r["rho"], r["noise_timing"])


def sort_key(key):
    model, batch, mode, rho, timing = key
    return (model, batch, {"none": 0, "gnc": 1, "isotropic": 2}.get(mode, 3), rho, timing)


# Table columns: (title, getter over a run, format).
COLUMNS = [
    ("test accuracy", lambda r: r["final_test_accuracy"], "{:.4f}"),
    ("test loss", lambda r: r["final_test_loss"], "{:.4f}"),
    ("train loss (last epoch)", lambda r: r["final_train_loss"], "{:.4f}"),
    ("top Hessian eigenvalue", lambda r: (r["sharpness"] or {}).get("top_eigenvalue"), "{:.4g}"),
    ("eps-sharpness", lambda r: (r["sharpness"] or {}).get("epsilon_sharpness"), "{:.4g}"),
    ("noise var along top / tr(Σ)/d",
     lambda r: (r["sharpness"] or {}).get("noise_ratio_top"), "{:.3g}"),
    ("same, random direction",
     lambda r: (r["sharpness"] or {}).get("noise_ratio_random"), "{:.3g}"),
]


def groups_of(runs):
    groups = {}
    for r in runs:
        groups.setdefault(group_key(r), []).append(r)
    return {k: groups[k] for k in sorted(groups, key=sort_key)}


def fmt(m, s, pattern):
    if m is None:
        return "—"
    return pattern.format(m) + ("" if s is None else " ± " + pattern.format(s))


def collapsed(r):
    """A finished run whose model predicts uniformly at the end (test loss at ln 10, the
    cross-entropy of a constant output over 10 classes): it lost all it had learned
    without a non-finite value, e.g. when the perturbation was too large in the warm-up."""
    loss = r.get("final_test_loss")
    return r["status"] == "ok" and loss is not None and loss >= 0.99 * math.log(10)


def write_table(out, runs):
    groups = groups_of(runs)
    lines = ["| model | global batch | mode | ρ | noise | runs (failed) | " +
             " | ".join(c[0] for c in COLUMNS) + " |",
             "|" + "---|" * (6 + len(COLUMNS))]
    for key, rs in groups.items():
        model, batch, mode, rho, timing = key
        ok = [r for r in rs if r["status"] == "ok" and not collapsed(r)]
        diverged = len(rs) - len(ok)
        cells = []
        for _, get, pattern in COLUMNS:
            m, s, _ = mean_std([get(r) for r in ok])
            cells.append(fmt(m, s, pattern))
        rho_text = "—" if mode == "none" else f"{rho:g}"
        timing_text = "—" if mode == "none" else timing
        lines.append(f"| {model} | {batch} | {mode} | {rho_text} | {timing_text} | "
                     f"{len(rs)} ({diverged}) | " + " | ".join(cells) + " |")
    commits = sorted({r["commit"] for r in runs})
    note = ("Means ± sample standard deviations over seeds of the runs that finished; "
            "failed runs — diverged (non-finite gradients) or collapsed (a constant "
            "output at the end: test loss at ln 10) — are counted, not averaged. Sharpness and "
            "noise figures are at the final w on the first training images "
            f"(gnc-sharpness). Commit(s): {', '.join(commits) if commits else '—'}.")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n\n" + note + "\n")


def write_results_csv(out, runs):
    fields = ["id", "status", "model", "global_batch", "workers", "per_worker_batch", "mode",
              "rho", "cap", "noise_timing", "seed", "epochs_planned", "lr", "warmup_steps",
              "seconds", "steps", "final_test_accuracy", "final_test_loss", "final_train_loss"]
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields + SHARPNESS_KEYS)
        for r in runs:
            s = r["sharpness"] or {}
            row = {**r, "status": "collapsed" if collapsed(r) else r["status"]}
            w.writerow([row.get(k) for k in fields] + [s.get(k) for k in SHARPNESS_KEYS])


def write_plots(out, runs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Like the table: diverged and collapsed runs are left out (the table counts them).
    ok = [r for r in runs if r["status"] == "ok" and not collapsed(r)]
    colors = {"none": "black", "gnc": "tab:red", "isotropic": "tab:blue"}
    written = []
    # Test accuracy against epoch: one figure per (model, batch, timing), one panel per
    # rho, each with mode none for reference; the band is one standard deviation.
    for (model, batch) in sorted({(r["model"], r["global_batch"]) for r in ok}):
        rs = [r for r in ok if r["model"] == model and r["global_batch"] == batch]
        settings = sorted({(r["rho"], r["noise_timing"]) for r in rs if r["mode"] != "none"})
        panels = settings or [(0, "previous")]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False,
                                 sharey=True)
        for ax, (rho, timing) in zip(axes[0], panels):
            for mode in ("none", "gnc", "isotropic"):
                sel = [r for r in rs if r["mode"] == mode and
                       (mode == "none" or (r["rho"] == rho and r["noise_timing"] == timing))]
                if not sel:
                    continue
                n = min(len(r["epochs"]) for r in sel)
                xs = [sel[0]["epochs"][i]["epoch"] for i in range(n)]
                stats = [mean_std([r["epochs"][i]["test_accuracy"] for r in sel])
                         for i in range(n)]
                ms = [m for m, _, _ in stats]
                ss = [s or 0.0 for _, s, _ in stats]
                label = mode if mode == "none" else f"{mode} ρ={rho:g}"
                ax.plot(xs, ms, color=colors[mode], label=f"{label} ({len(sel)} seeds)")
                ax.fill_between(xs, [m - s for m, s in zip(ms, ss)],
                                [m + s for m, s in zip(ms, ss)], color=colors[mode], alpha=0.2)
            ax.set_title(f"{model}, batch {batch}" + ("" if not settings else
                                                      f", ρ={rho:g}, {timing}"))
            ax.set_xlabel("epoch (of optimizer steps)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
            finals = [r["final_test_accuracy"] for r in rs]
            lo = min(finals)
            ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(finals) + 0.01))
        axes[0][0].set_ylabel("test accuracy")
        fig.tight_layout()
        name = f"accuracy_vs_epoch_{model}_b{batch}.png"
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)
        written.append(name)

    # Final accuracy and sharpness against rho, per model and large batch: gnc and
    # isotropic with error bars, none and the small-batch reference as lines.
    for model in sorted({r["model"] for r in ok}):
        rs = [r for r in ok if r["model"] == model]
        large = max(r["global_batch"] for r in rs)
        small = min(r["global_batch"] for r in rs)
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        panels = [("final_test_accuracy", "test accuracy", lambda r: r["final_test_accuracy"]),
                  ("top_eigenvalue", "top Hessian eigenvalue",
                   lambda r: r["sharpness"]["top_eigenvalue"]),
                  ("noise_ratio_top", "noise var along top / tr(Σ)/d",
                   lambda r: r["sharpness"]["noise_ratio_top"])]
        for ax, (_, title, get) in zip(axes, panels):
            for mode in ("gnc", "isotropic"):
                for timing, style in (("previous", "-o"), ("fresh", "--s")):
                    sel = [r for r in rs if r["global_batch"] == large and r["mode"] == mode and
                           r["noise_timing"] == timing]
                    rhos = sorted({r["rho"] for r in sel})
                    if not rhos:
                        continue
                    stats = [mean_std([get(r) for r in sel if r["rho"] == x]) for x in rhos]
                    ax.errorbar(rhos, [m for m, _, _ in stats], yerr=[s or 0 for _, s, _ in stats],
                                fmt=style, color=colors[mode], capsize=3,
                                label=f"{mode} ({timing})")
            for batch, style, label in ((large, "-", f"none, batch {large}"),
                                        (small, ":", f"none, batch {small}")):
                if batch == large and small == large and style == ":":
                    continue
                m, s, n = mean_std([get(r) for r in rs
                                    if r["global_batch"] == batch and r["mode"] == "none"])
                if m is None:
                    continue
                ax.axhline(m, color="black", linestyle=style, label=label)
                if s:
                    ax.axhspan(m - s, m + s, color="gray", alpha=0.15)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("ρ (gnc_scale)")
            ax.set_title(f"{model}: {title}")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        name = f"vs_rho_{model}.png"
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def cmd_report(a):
    runs = load_runs(a.out)
    write_results_csv(a.out, runs)
    write_table(a.out, runs)
    if runs:
        write_plots(a.out, runs)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dir", required=True)
    r.add_argument("--status", choices=["ok", "diverged"], required=True)
    for name in ("model", "mode", "timing", "commit"):
        r.add_argument("--" + name, required=True)
    for name in ("global_batch", "workers", "per_worker", "seed", "epochs", "warmup_steps",
                 "seconds", "quick"):
        r.add_argument("--" + name, type=int, required=True)
    for name in ("rho", "cap", "lr"):
        r.add_argument("--" + name, type=float, required=True)
    s = sub.add_parser("summary")
    s.add_argument("--dir", required=True)
    rep = sub.add_parser("report")
    rep.add_argument("--out", required=True)
    a = p.parse_args()
    {"run": cmd_run, "summary": cmd_summary, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()

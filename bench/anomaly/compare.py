#!/usr/bin/python3
"""Compare whalewatch's Go Isolation Forest with scikit-learn's on the same data.

Usage: compare.py DIR

DIR holds what `TestExportForSklearn` (services/detector/internal/anomaly)
wrote: dataset.csv, go_scores.csv, go_timing.json, go_explain.json. For each
workload profile, scikit-learn's IsolationForest (n_estimators=100,
max_samples=256, one random_state per seed) is fitted on the profile's train
split and scores its test split; ROC AUC is computed against the labels for
it and for both Go scorings. Prints a Markdown report and writes
DIR/results.json.
"""
import csv
import json
import os
import statistics
import sys
import time
from collections import defaultdict

import numpy as np
import sklearn
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

FEATURES = ["cpu_percent", "memory_bytes", "net_rx_bytes_per_sec", "net_tx_bytes_per_sec",
            "process_count", "connection_count", "new_process_rate"]
THRESHOLDS = [0.55, 0.6, 0.65, 0.7]
SINGLE_CALLS = 200


def load(d):
    data = defaultdict(lambda: {"train": [], "test": [], "label": [], "kind": []})
    with open(os.path.join(d, "dataset.csv")) as f:
        for r in csv.DictReader(f):
            p = data[r["profile"]]
            x = [float(r[n]) for n in FEATURES]
            p[r["split"]].append(x)
            if r["split"] == "test":
                p["label"].append(int(r["label"]))
                p["kind"].append(r["kind"])
    for p in data.values():
        for k in ("train", "test", "label"):
            p[k] = np.array(p[k])
    go = defaultdict(dict)  # go[scoring][(profile, seed)] = scores
    with open(os.path.join(d, "go_scores.csv")) as f:
        for r in csv.DictReader(f):
            go[r["scoring"]].setdefault((r["profile"], int(r["seed"])), []).append(float(r["score"]))
    with open(os.path.join(d, "go_timing.json")) as f:
        timing = json.load(f)
    with open(os.path.join(d, "go_explain.json")) as f:
        explain = json.load(f)
    return dict(data), {k: {kk: np.array(vv) for kk, vv in v.items()} for k, v in go.items()}, timing, explain


def ms(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs, digits=4):
    m, s = ms(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def main():
    d = sys.argv[1]
    data, go, timing, explain = load(d)
    profiles = list(data)
    seeds = timing["seeds"]

    sk = {}
    fit_s, batch_s, single_s = [], [], []
    for p in profiles:
        for seed in range(1, seeds + 1):
            clf = IsolationForest(n_estimators=100, max_samples=256, random_state=seed)
            t = time.perf_counter()
            clf.fit(data[p]["train"])
            fit_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            sk[(p, seed)] = -clf.score_samples(data[p]["test"])
            batch_s.append((time.perf_counter() - t) / len(data[p]["test"]))
            if seed == 1:
                test = data[p]["test"]
                t = time.perf_counter()
                for i in range(SINGLE_CALLS):
                    clf.score_samples(test[i:i + 1])
                single_s.append((time.perf_counter() - t) / SINGLE_CALLS)
    models = {"scikit-learn": sk, "go vanilla": go["vanilla"], "go range-aware": go["range-aware"]}

    def auc(scores, p, seed, kind=None):
        y, s = data[p]["label"], scores[(p, seed)]
        if kind is not None:
            keep = np.array([k in ("", kind) for k in data[p]["kind"]])
            y, s = y[keep], s[keep]
        return roc_auc_score(y, s) if 0 < y.sum() < len(y) else None

    def pooled(scores, seed, kind=None):
        y = np.concatenate([data[p]["label"] for p in profiles])
        s = np.concatenate([scores[(p, seed)] for p in profiles])
        if kind is not None:
            k = np.concatenate([data[p]["kind"] for p in profiles])
            keep = (k == "") | (k == kind)
            y, s = y[keep], s[keep]
        return roc_auc_score(y, s)

    res = {"sklearn_version": sklearn.__version__, "numpy_version": np.__version__, "seeds": seeds,
           "auc": {}, "delta_auc_vanilla_vs_sklearn": {}, "timing": {}, "thresholds": {}, "explain": explain}
    rows = profiles + ["pooled"]
    for name, scores in models.items():
        res["auc"][name] = {}
        for p in profiles:
            res["auc"][name][p] = [auc(scores, p, s) for s in range(1, seeds + 1)]
        res["auc"][name]["pooled"] = [pooled(scores, s) for s in range(1, seeds + 1)]
    for r in rows:
        a, b = ms(res["auc"]["go vanilla"][r])[0], ms(res["auc"]["scikit-learn"][r])[0]
        res["delta_auc_vanilla_vs_sklearn"][r] = a - b

    kinds = sorted({k for p in profiles for k in data[p]["kind"] if k})
    res["auc_by_attack"] = {name: {k: [pooled(sc, s, k) for s in range(1, seeds + 1)] for k in kinds}
                            for name, sc in models.items()}

    for name, scores in models.items():
        res["thresholds"][name] = {}
        y = np.concatenate([data[p]["label"] for p in profiles])
        kk = np.concatenate([data[p]["kind"] for p in profiles])
        for th in THRESHOLDS:
            fpr, tpr = [], defaultdict(list)
            for s in range(1, seeds + 1):
                sc = np.concatenate([scores[(p, s)] for p in profiles])
                fpr.append(float((sc[y == 0] >= th).mean()))
                tpr["all"].append(float((sc[y == 1] >= th).mean()))
                for k in kinds:
                    tpr[k].append(float((sc[kk == k] >= th).mean()))
            res["thresholds"][name][str(th)] = {"fpr": statistics.mean(fpr),
                                                **{k: statistics.mean(v) for k, v in tpr.items()}}

    res["timing"] = {
        "sklearn_fit_seconds": statistics.mean(fit_s),
        "sklearn_batch_score_us_per_vector": statistics.mean(batch_s) * 1e6,
        "sklearn_single_call_us": statistics.mean(single_s) * 1e6,
        "go_fit_seconds": timing["train_seconds_per_forest"],
        "go_score_us_per_vector": timing["score_ns_per_vector"] / 1e3,
        "go_score_vanilla_us_per_vector": timing["score_vanilla_ns_per_vector"] / 1e3,
    }
    t = res["timing"]
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(res, f, indent=2)

    n_test = sum(len(data[p]["label"]) for p in profiles)
    n_anom = sum(int(data[p]["label"].sum()) for p in profiles)
    print(f"scikit-learn {sklearn.__version__}, numpy {np.__version__}; {len(profiles)} profiles, "
          f"{n_test} test vectors of which {n_anom} anomalous ({100 * n_anom / n_test:.1f}%); {seeds} seeds\n")
    print("ROC AUC, mean ± sd over seeds:\n")
    print("| profile | scikit-learn | Go vanilla | Go range-aware | Δ vanilla − sklearn |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r} | {fmt(res['auc']['scikit-learn'][r])} | {fmt(res['auc']['go vanilla'][r])} | "
              f"{fmt(res['auc']['go range-aware'][r])} | {res['delta_auc_vanilla_vs_sklearn'][r]:+.4f} |")
    print("\nPooled ROC AUC by attack (that attack's vectors against all normal ones):\n")
    print("| attack | scikit-learn | Go vanilla | Go range-aware |")
    print("|---|---|---|---|")
    for k in kinds:
        print(f"| {k} | " + " | ".join(fmt(res["auc_by_attack"][n][k]) for n in models) + " |")
    print("\nScore threshold: share of normal test vectors at or above it (FPR) and of attack vectors (TPR):\n")
    print("| threshold | model | FPR | TPR all | " + " | ".join(kinds) + " |")
    print("|---|---|---|---|" + "---|" * len(kinds))
    for th in THRESHOLDS:
        for name in ("scikit-learn", "go range-aware"):
            v = res["thresholds"][name][str(th)]
            print(f"| {th} | {name} | {v['fpr']:.4f} | {v['all']:.3f} | " +
                  " | ".join(f"{v[k]:.3f}" for k in kinds) + " |")
    print("\nExplanation (Go range-aware, all attack test vectors): the first named feature is one the attack "
          "changes / any named feature is:\n")
    print("| attack | first | any | vectors |")
    print("|---|---|---|---|")
    for k, h in sorted(explain.items()):
        print(f"| {k} | {h['First'] / h['Total']:.3f} | {h['Any'] / h['Total']:.3f} | {h['Total']} |")
    print("\nTiming (same machine, same run):\n")
    print("| | scikit-learn | Go | ratio |")
    print("|---|---|---|---|")
    print(f"| fit one forest (100 trees, ψ=256, 2048 vectors) | {t['sklearn_fit_seconds'] * 1e3:.1f} ms | "
          f"{t['go_fit_seconds'] * 1e3:.2f} ms | {t['sklearn_fit_seconds'] / t['go_fit_seconds']:.0f}× |")
    print(f"| score, batch of 2048, per vector | {t['sklearn_batch_score_us_per_vector']:.2f} µs | "
          f"{t['go_score_vanilla_us_per_vector']:.2f} µs vanilla | "
          f"{t['sklearn_batch_score_us_per_vector'] / t['go_score_vanilla_us_per_vector']:.1f}× |")
    print(f"| score, batch of 2048, per vector | | {t['go_score_us_per_vector']:.2f} µs range-aware | "
          f"{t['sklearn_batch_score_us_per_vector'] / t['go_score_us_per_vector']:.1f}× |")
    print(f"| score one vector per call (streaming) | {t['sklearn_single_call_us']:.0f} µs | "
          f"{t['go_score_us_per_vector']:.2f} µs range-aware | "
          f"{t['sklearn_single_call_us'] / t['go_score_us_per_vector']:.0f}× |")


if __name__ == "__main__":
    main()

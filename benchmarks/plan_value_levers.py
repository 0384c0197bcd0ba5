"""The levers of benchmarks/plan_value_study.py, applied to its cached arrays (no model is fitted here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from finrec.plan.solve import greedy, solve_exact
from finrec.training.calibration import choice_probabilities, expected_calibration_error, fit_calibration


def load(cache: Path, bank_seed: str, variant: str):
    truth = dict(np.load(cache / f"{bank_seed}_truth.npz"))
    path = cache / f"{bank_seed}_{variant}.npz"
    if not path.exists():
        return truth, None
    v = dict(np.load(path))
    if list(v["pids"]) != list(truth["pids"]):  # another product order (LightGBM's pipeline): reorder
        order = [list(v["pids"]).index(p) for p in truth["pids"]]
        for key in ("test_scores", "cal_scores", "cal_adopted", "cal_held"):
            v[key] = v[key][:, order]
    return truth, v


# ------------------------------------------------------------------------------ estimators


def isotonic(v, held, centred=True, method="isotonic"):
    cal = fit_calibration(
        v["cal_scores"], v["cal_adopted"], v["cal_held"], list(range(v["cal_scores"].shape[1])),
        float(v["temperature"]), centred=centred, method=method,
    )  # fmt: skip
    return cal(v["test_scores"], held).astype("float64")


def shipped(v, held):
    """``fit_calibration``'s default, as ``finrec train`` fits it."""
    cal = fit_calibration(
        v["cal_scores"], v["cal_adopted"], v["cal_held"], list(range(v["cal_scores"].shape[1])),
        float(v["temperature"]),
    )  # fmt: skip
    return cal(v["test_scores"], held).astype("float64")


def subset(v, rows):
    return {**v, **{k: v[k][rows] for k in ("cal_scores", "cal_adopted", "cal_held")}}


def _logit_features(q):
    return np.log(np.clip(q, 1e-12, None))


def platt(v, held, shared_slope=False, strength=1.0):
    """Per product: P = sigmoid(a_p + b_p * log q) by logistic regression on the calibration
    customers (``shared_slope``: one b for every product, a_p per product)."""
    from sklearn.linear_model import LogisticRegression

    T = float(v["temperature"])
    qc = choice_probabilities(v["cal_scores"], v["cal_held"], T)
    qt = choice_probabilities(v["test_scores"], held, T)
    P = qc.shape[1]
    out = np.zeros_like(qt)
    if shared_slope:
        rows, cols = np.nonzero(~v["cal_held"])
        X = np.zeros((len(rows), P + 1))
        X[:, 0] = _logit_features(qc[rows, cols])
        X[np.arange(len(rows)), 1 + cols] = 1.0
        m = LogisticRegression(C=strength * 1e4, fit_intercept=False, max_iter=2000).fit(
            X, v["cal_adopted"][rows, cols]
        )
        b, a = m.coef_[0, 0], m.coef_[0, 1:]
        out = 1 / (1 + np.exp(-(a[None, :] + b * _logit_features(qt))))
    else:
        for j in range(P):
            mask = ~v["cal_held"][:, j]
            y = v["cal_adopted"][mask, j]
            x = _logit_features(qc[mask, j])[:, None]
            if y.sum() < 2:
                out[:, j] = y.mean() if len(y) else 0.0
                continue
            m = LogisticRegression(C=strength, max_iter=1000).fit(x, y)
            out[:, j] = m.predict_proba(_logit_features(qt[:, j])[:, None])[:, 1]
    out[held] = 0
    return out


def beta_calibration(v, held):
    """Per product: logit P = c + a ln q - b ln(1 - q) (Kull et al. 2017's beta calibration,
    Platt's extension for scores that are probabilities), logistic regression on the calibration
    customers; a negative a or b is dropped (the map stays monotone)."""
    from sklearn.linear_model import LogisticRegression

    T = float(v["temperature"])
    qc = choice_probabilities(v["cal_scores"], v["cal_held"], T)
    qt = choice_probabilities(v["test_scores"], held, T)

    def feats(q):
        q = np.clip(q, 1e-12, 1 - 1e-9)
        return np.stack([np.log(q), -np.log1p(-q)], axis=1)

    out = np.zeros_like(qt)
    for j in range(qc.shape[1]):
        mask = ~v["cal_held"][:, j]
        X, y = feats(qc[mask, j]), v["cal_adopted"][mask, j]
        if y.sum() < 2:
            out[:, j] = y.mean() if len(y) else 0.0
            continue
        cols = [0, 1]
        for _ in range(2):
            m = LogisticRegression(C=1e4, max_iter=2000).fit(X[:, cols], y)
            keep = [c for c, w in zip(cols, m.coef_[0]) if w > 0]
            if keep == cols:
                break
            cols = keep or [0]
        out[:, j] = m.predict_proba(feats(qt[:, j])[:, cols])[:, 1]
    out[held] = 0
    return out


def oracle_recalibration(v, held, true):
    """The model's choice probability mapped per product by the isotonic fit of the TRUE
    probabilities on the held-out customers: the model's ranking with a perfect calibration."""
    from sklearn.isotonic import IsotonicRegression

    q = choice_probabilities(v["test_scores"], held, float(v["temperature"]))
    out = np.zeros_like(q)
    for j in range(q.shape[1]):
        m = ~held[:, j]
        out[m, j] = IsotonicRegression(out_of_bounds="clip").fit(q[m, j], true[m, j]).predict(q[m, j])
    return out


# ------------------------------------------------------------------------------ judging


def judge(p_hat, truth, contacts):
    allowed = truth["allowed"].astype(bool)
    values = truth["values"]
    capacity = truth["capacity"]
    w_true = (truth["true"] * allowed * values).astype(np.float32)
    ceiling = solve_exact(w_true, capacity, contacts).value
    w_hat = (p_hat * allowed * values).astype(np.float32)
    plan = solve_exact(w_hat, capacity, contacts)
    base = greedy(w_hat, capacity, contacts)

    def true_value(p):
        return float(w_true[p.rows, p.cols].astype("float64").sum())

    return {
        "plan_over_ceiling": true_value(plan) / ceiling,
        "greedy_over_ceiling": true_value(base) / ceiling,
        "predicted_over_true": plan.value / true_value(plan),
        "ece": expected_calibration_error(p_hat[allowed], truth["true"][allowed]),
    }


def estimators(truth, variants):
    """name -> p_hat [n, P] for every lever the cached variants allow."""
    held = truth["held"].astype(bool)
    true = truth["true"]
    base = variants.get("base")
    out = {"truth (ceiling)": true}
    if base is None:
        return out
    iso = isotonic(base, held)
    out["isotonic (centred, shipped before)"] = iso
    out["beta calibration (shipped)"] = shipped(base, held)
    out["isotonic, plain steps"] = isotonic(base, held, centred=False)
    oracle = oracle_recalibration(base, held, true)
    out["oracle recalibration of the model's q"] = oracle
    # The calibration's error, put onto the true probabilities: what mis-calibration alone costs.
    ratio = np.divide(iso, oracle, out=np.ones_like(iso), where=oracle > 0)
    out["truth x (isotonic / oracle map)"] = true * ratio
    out["platt per product (log q)"] = platt(base, held)
    half = subset(base, np.random.default_rng(0).random(len(base["cal_scores"])) < 0.5)
    out["isotonic, half the calibration customers"] = isotonic(half, held)
    out["platt, half the calibration customers"] = platt(half, held)
    adopters = subset(base, base["cal_adopted"].any(axis=1))
    out["isotonic, adopters only"] = isotonic(adopters, held)
    out["beta (shipped), adopters only"] = shipped(adopters, held)
    out["beta calibration per product"] = beta_calibration(base, held)
    out["platt, shared slope"] = platt(base, held, shared_slope=True)
    ensemble = [v for k, v in variants.items() if k.startswith("seed") or k == "base"]
    if len(ensemble) > 1:
        out[f"mean of {len(ensemble)} seeds' isotonic"] = np.mean([isotonic(v, held) for v in ensemble], axis=0)
        members = np.array([shipped(v, held) for v in ensemble])
        mean, spread = members.mean(axis=0), members.std(axis=0, ddof=1)
        out[f"mean of {len(ensemble)} seeds' platt"] = mean
        # The optimiser's-curse remedy: each pair shrunk by its own uncertainty (the seeds' spread).
        for lam in (0.5, 1.0):
            out[f"  same, minus {lam} x the seeds' spread"] = np.clip(mean - lam * spread, 0.0, 1.0)
    for name, v in variants.items():
        if name.startswith(("ens", "epochs", "monitor", "patience", "cfg-")) or name == "lgbm":
            out[f"{name}: isotonic"] = isotonic(v, held)
            out[f"{name}: shipped (beta)"] = shipped(v, held)
            out[f"{name}: oracle recalibration"] = oracle_recalibration(v, held, true)
    return out


def report(cache: Path, results: Path, banks=None) -> None:
    keys = sorted({p.name.rsplit("_", 1)[0] for p in cache.glob("*_truth.npz")})
    if banks:
        keys = [k for k in keys if k in banks]
    store = {}
    for key in keys:
        truth = dict(np.load(cache / f"{key}_truth.npz"))
        variants = {}
        for p in sorted(cache.glob(f"{key}_*.npz")):
            name = p.stem[len(key) + 1 :]
            if name != "truth":
                variants[name] = load(cache, key, name)[1]
        rows = {}
        for name, p_hat in estimators(truth, variants).items():
            rows[name] = {c: judge(p_hat, truth, c) for c in (1, 2)}
        store[key] = rows
        print(
            f"\n{key}  ({truth['true'].shape[0]} customers x {truth['true'].shape[1]} products; variants {list(variants)})"
        )
        print(f"{'estimator':<45}{'plan/ceil c1':>13}{'c2':>7}{'greedy c1':>10}{'pred/true c1':>13}{'ECE':>8}")
        for name, r in rows.items():
            print(
                f"{name:<45}{r[1]['plan_over_ceiling']:>13.3f}{r[2]['plan_over_ceiling']:>7.3f}"
                f"{r[1]['greedy_over_ceiling']:>10.3f}{r[1]['predicted_over_true']:>13.3f}{r[1]['ece']:>8.4f}"
            )
    old = json.loads(results.read_text()) if results.exists() else {}
    old.update(store)
    results.write_text(json.dumps(old, indent=1))

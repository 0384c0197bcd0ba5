"""Calibrated adoption probabilities: from a cosine score to P(customer adopts the product).

A cosine similarity ranks well but is not a probability: a campaign that multiplies it by a
margin, or compares it across products, needs ``P(customer c adopts product p in the period)``.
``Calibration`` holds one isotonic (monotone, piecewise-linear) map per product, fitted on
customers the model was not trained on, with every customer of that set as data, including
those who adopted nothing (zeros for every product)::

    p_hat(c, p) = f_p(cos(c, p)),   f_p = argmin over non-decreasing f of
                                          sum_{c not holding p} (f(cos(c, p)) - y(c, p))^2

where ``y(c, p)`` is 1 when c adopted p in the period of the data (its ``interactions``) and 0
otherwise (pool-adjacent-violators, scikit-learn's ``IsotonicRegression``). Between the fitted
knots the map is linear; outside them it is flat. A product with fewer than ``min_positives``
adoptions in the calibration set gets the pooled map of all products scaled to its own
adoption rate, so a rare product is not pinned to 0.

The map is stored as JSON (knots only, never a pickle) and applied with ``np.interp``, so
serving needs no scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finrec.errors import ArtifactError

CALIBRATION_FORMAT = 1
MIN_POSITIVES = 20
EVENT = "adopts the product within the period the training interactions cover"


@dataclass
class Calibration:
    """Per-product isotonic maps from cosine score to adoption probability, in catalogue order."""

    product_ids: list[str]
    knots_x: list[np.ndarray]  # per product, increasing cosine thresholds
    knots_y: list[np.ndarray]  # per product, non-decreasing probabilities in [0, 1]
    customers: int = 0  # customers the maps were fitted on
    positives: list[int] = field(default_factory=list)  # adoptions per product in that set
    pooled: list[bool] = field(default_factory=list)  # products that use the pooled map
    event: str = EVENT

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Probabilities float32 [n, P] for cosine scores [n, P] (catalogue order)."""
        scores = np.asarray(scores)
        if scores.ndim != 2 or scores.shape[1] != len(self.product_ids):
            raise ValueError(f"expected scores [n, {len(self.product_ids)}], got shape {scores.shape}")
        out = np.empty(scores.shape, dtype=np.float32)
        for j, (x, y) in enumerate(zip(self.knots_x, self.knots_y)):
            out[:, j] = np.interp(scores[:, j], x, y)
        return out

    def at(self, index: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Probabilities float32 of products ``index`` (int, any shape; -1: none, gives NaN) at
        their cosine ``scores`` (same shape): a ranking's top-k without the full [n, P] matrix."""
        index, scores = np.asarray(index), np.asarray(scores)
        out = np.full(index.shape, np.nan, dtype=np.float32)
        for j, (x, y) in enumerate(zip(self.knots_x, self.knots_y)):
            where = index == j
            if where.any():
                out[where] = np.interp(scores[where], x, y)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "method": "isotonic per product",
            "event": self.event,
            "customers": int(self.customers),
            "products": [
                {
                    "product_id": pid,
                    "x": [float(v) for v in x],
                    "y": [float(v) for v in y],
                    "positives": int(pos),
                    "pooled": bool(pooled),
                }
                for pid, x, y, pos, pooled in zip(
                    self.product_ids, self.knots_x, self.knots_y, self.positives, self.pooled
                )
            ],
        }

    @classmethod
    def from_dict(cls, raw: Any, source: str = "calibration.json") -> Calibration:
        try:
            if raw["format"] != CALIBRATION_FORMAT:
                raise ArtifactError(f"{source}: calibration format {raw['format']!r} is not supported")
            products = raw["products"]
            knots_x = [np.asarray(p["x"], dtype="float64") for p in products]
            knots_y = [np.asarray(p["y"], dtype="float64") for p in products]
            calibration = cls(
                product_ids=[str(p["product_id"]) for p in products],
                knots_x=knots_x,
                knots_y=knots_y,
                customers=int(raw.get("customers", 0)),
                positives=[int(p.get("positives", 0)) for p in products],
                pooled=[bool(p.get("pooled", False)) for p in products],
                event=str(raw.get("event", EVENT)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{source}: damaged calibration ({type(exc).__name__}: {exc})") from None
        for pid, x, y in zip(calibration.product_ids, knots_x, knots_y):
            ok = (
                x.ndim == 1
                and len(x) == len(y)
                and len(x) >= 1
                and np.all(np.isfinite(x))
                and np.all(np.isfinite(y))
                and np.all(np.diff(x) >= 0)
                and np.all(np.diff(y) >= 0)
                and y.min() >= 0
                and y.max() <= 1
            )
            if not ok:
                raise ArtifactError(f"{source}: the map of product {pid!r} is not a non-decreasing map into [0, 1]")
        return calibration


def fit_calibration(
    scores: np.ndarray,
    adopted: np.ndarray,
    eligible: np.ndarray,
    product_ids: list[str],
    min_positives: int = MIN_POSITIVES,
) -> Calibration:
    """Fit the per-product maps (module docstring) on ``scores`` float [n, P], ``adopted`` bool
    [n, P] and ``eligible`` bool [n, P] (False for held products: they are never offered, so they
    are not data for the probability of adopting them)."""
    from sklearn.isotonic import IsotonicRegression

    scores, adopted, eligible = np.asarray(scores, "float64"), np.asarray(adopted, bool), np.asarray(eligible, bool)
    if not scores.shape == adopted.shape == eligible.shape or scores.shape[1] != len(product_ids):
        raise ValueError("scores, adopted and eligible must all be [n, P] with P = len(product_ids)")
    if not eligible.any():
        raise ValueError("no eligible customer-product pair to calibrate on")

    def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
        return model.X_thresholds_.astype("float64"), model.y_thresholds_.astype("float64")

    # The pooled map for rare products: all products' pairs together.
    pooled_x, pooled_y = isotonic(scores[eligible], adopted[eligible].astype("float64"))
    base_rate = adopted[eligible].mean()
    knots_x, knots_y, positives, pooled = [], [], [], []
    for j in range(scores.shape[1]):
        mask = eligible[:, j]
        x, y = scores[mask, j], adopted[mask, j].astype("float64")
        count = int(y.sum())
        positives.append(count)
        if count >= min_positives:
            kx, ky = isotonic(x, y)
            pooled.append(False)
        else:
            # Rare: the pooled shape, rescaled so that its mean over this product's customers
            # equals the product's own (add-one smoothed) adoption rate.
            rate = (count + base_rate) / (len(y) + 1) if len(y) else base_rate
            shape = np.interp(x, pooled_x, pooled_y).mean() if len(x) else base_rate
            scale = rate / shape if shape > 0 else 0.0
            kx, ky = pooled_x, np.clip(pooled_y * scale, 0.0, 1.0)
            pooled.append(True)
        knots_x.append(kx)
        knots_y.append(ky)
    return Calibration(
        list(map(str, product_ids)),
        knots_x,
        knots_y,
        customers=int(scores.shape[0]),
        positives=positives,
        pooled=pooled,
    )


# ---------------------------------------------------------------------------------- measuring


def expected_calibration_error(predicted: np.ndarray, true: np.ndarray, bins: int = 20) -> float:
    """ECE against known probabilities, equal-mass bins of the prediction::

        ECE = sum_b (n_b / N) * | mean_{i in b} predicted_i - mean_{i in b} true_i |

    with ``bins`` bins holding equal numbers of pairs (sorted by prediction; ties may split).
    Equal-width bins would put nearly every pair in the first bin, where most probabilities are."""
    predicted, true = np.asarray(predicted, "float64").ravel(), np.asarray(true, "float64").ravel()
    order = np.argsort(predicted, kind="stable")
    total = 0.0
    for part in np.array_split(order, min(bins, len(order))):
        total += len(part) * abs(predicted[part].mean() - true[part].mean())
    return total / len(order)


def reliability_table(predicted: np.ndarray, true: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Rows of a reliability diagram: per equal-mass bin, the pairs, the mean prediction and the
    mean true probability (or outcome)."""
    predicted, true = np.asarray(predicted, "float64").ravel(), np.asarray(true, "float64").ravel()
    order = np.argsort(predicted, kind="stable")
    return [
        {"pairs": len(part), "predicted": float(predicted[part].mean()), "true": float(true[part].mean())}
        for part in np.array_split(order, min(bins, len(order)))
    ]


def brier_score(predicted: np.ndarray, outcome: np.ndarray) -> float:
    """mean (predicted - outcome)^2 over the pairs."""
    predicted, outcome = np.asarray(predicted, "float64").ravel(), np.asarray(outcome, "float64").ravel()
    return float(np.mean((predicted - outcome) ** 2))

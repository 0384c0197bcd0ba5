"""Calibrated adoption probabilities: from the model's scores to P(customer adopts the product).

A cosine similarity ranks well but is not a probability: a campaign that multiplies it by a
margin, or compares it across products, needs ``P(customer c adopts product p in the period)``.
``Calibration`` holds one monotone, piecewise-linear map per product, fitted on customers the
model was not trained on, with every customer of that set as data, including those who adopted
nothing (zeros for every product)::

    q(c, p)     = softmax over the products c does not hold of cos(c, p) / T
    p_hat(c, p) = f_p(q(c, p)),   f_p(q) = sigmoid(a_p + b_p * ln q)   (Platt, the default)
                                  or the centred isotonic fit of y(c, p) on q(c, p)

where ``T`` is the training temperature and ``y(c, p)`` is 1 when c adopted p in the period of
the data (its ``interactions``) and 0 otherwise.
``(a_p, b_p)`` is the logistic regression of ``y(c, p)`` on ``ln q(c, p)`` over the customers
not holding p (``b_p >= 0``, so the map never reverses the model's order). Two numbers per
product instead of one step per block: on the development banks (benchmarks/plan_value_study.py)
the isotonic map's top block, fitted on a few dozen lucky adopters, overstated the probability of
exactly the customers a campaign picks (the plan's predicted value 1.13-1.20x its true value,
Platt's 0.99-1.04x), and the plans built on Platt's probabilities were worth as much or more
(0.1-1.3% of the ceiling). ``method="isotonic"`` keeps the isotonic map. ``q`` is the model's own choice distribution
(what the softmax loss trains): a customer with many attractive products is less likely to take
any one of them, which the bare cosine cannot say; on the default synthetic bank it cut the
squared error against the true probabilities from 0.0040 to 0.0015 (benchmarks/calibration.py).
The isotonic fit (pool-adjacent-violators, scikit-learn's ``IsotonicRegression``) is *centred*
(``centred_knots``): each block of equal fitted value becomes one knot at its members' mean,
so the map rises strictly between blocks and customers keep their order (``plan`` picks the
best few hundred of a product; ties would make that pick random). A product with fewer than
``min_positives`` adoptions in the calibration set gets the pooled map of all products, scaled
to its own adoption rate (Platt: the pooled slope with its own intercept), so a rare product is
not pinned to 0. Held products get 0.

The maps are stored as JSON (knots only, never a pickle; a Platt map as ``PLATT_KNOTS`` knots
spaced evenly in ln q, within 2e-3 of the curve for slopes up to 3) and applied with ``np.interp``, so serving
needs no scikit-learn and reads either method the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finrec.errors import ArtifactError

CALIBRATION_FORMAT = 2
MIN_POSITIVES = 20
EVENT = "adopts the product within the period the training interactions cover"
METHODS = {  # method -> how calibration.json describes it
    "platt": "Platt per product: sigmoid(a + b ln q), q = softmax(cos / temperature) over products not held",
    "isotonic": "centred isotonic per product, on softmax(cos / temperature) over products not held",
}
PLATT_KNOTS = 256
Q_FLOOR = 1e-12  # ln q of a product the softmax all but rules out


def _method_of(text) -> str:
    """The method name of a stored description (older files: the isotonic one)."""
    for name, description in METHODS.items():
        if text == description:
            return name
    return "isotonic"


@dataclass
class Calibration:
    """Per-product maps from the model's choice probability to adoption probability."""

    product_ids: list[str]
    temperature: float  # q = softmax(cos / temperature) over the products not held
    knots_x: list[np.ndarray]  # per product, increasing values of q
    knots_y: list[np.ndarray]  # per product, non-decreasing probabilities in [0, 1]
    customers: int = 0  # customers the maps were fitted on
    positives: list[int] = field(default_factory=list)  # adoptions per product in that set
    pooled: list[bool] = field(default_factory=list)  # products that use the pooled map
    event: str = EVENT
    method: str = "platt"  # how the knots were fitted (METHODS); applying them is the same for all

    def __call__(self, scores: np.ndarray, held: np.ndarray) -> np.ndarray:
        """Probabilities float32 [n, P] for cosine ``scores`` [n, P] and ``held`` bool [n, P]
        (catalogue order); 0 for held products."""
        scores, held = np.asarray(scores), np.asarray(held, dtype=bool)
        if scores.ndim != 2 or scores.shape[1] != len(self.product_ids) or held.shape != scores.shape:
            raise ValueError(
                f"expected scores and held [n, {len(self.product_ids)}], got {scores.shape} and {held.shape}"
            )
        q = choice_probabilities(scores, held, self.temperature)
        out = np.empty(scores.shape, dtype=np.float32)
        for j, (x, y) in enumerate(zip(self.knots_x, self.knots_y)):
            out[:, j] = np.interp(q[:, j], x, y)
        out[held] = 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "method": METHODS.get(self.method, self.method),
            "temperature": float(self.temperature),
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
            temperature = float(raw["temperature"])
            if not np.isfinite(temperature) or temperature <= 0:
                raise ValueError(f"temperature must be a positive number, got {temperature}")
            calibration = cls(
                product_ids=[str(p["product_id"]) for p in products],
                temperature=temperature,
                knots_x=knots_x,
                knots_y=knots_y,
                customers=int(raw.get("customers", 0)),
                positives=[int(p.get("positives", 0)) for p in products],
                pooled=[bool(p.get("pooled", False)) for p in products],
                event=str(raw.get("event", EVENT)),
                method=_method_of(raw.get("method")),
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


def centred_knots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred isotonic regression: the PAV fit's blocks (runs of equal fitted value), each
    placed at the mean score of its members, joined by straight lines and extended along the end
    slopes to the range of the data (clipped into [0, 1]). Strictly increasing where the fit
    rises, so customers on one step of the plain fit stay ordered by their score (a campaign
    choosing the best few hundred of a product would otherwise pick among ties at random)."""
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y).predict(x)
    levels, block = np.unique(fitted, return_inverse=True)
    centres = np.bincount(block, weights=x) / np.bincount(block)
    if len(levels) == 1:
        return np.array([float(centres[0])]), np.array([float(levels[0])])
    low_slope = (levels[1] - levels[0]) / max(centres[1] - centres[0], 1e-12)
    high_slope = (levels[-1] - levels[-2]) / max(centres[-1] - centres[-2], 1e-12)
    x0, x1 = float(x.min()), float(x.max())
    y0 = max(levels[0] - low_slope * (centres[0] - x0), 0.0)
    y1 = min(levels[-1] + high_slope * (x1 - centres[-1]), 1.0)
    return np.r_[x0, centres, x1], np.r_[y0, levels, y1]


def choice_probabilities(scores: np.ndarray, held: np.ndarray, temperature: float) -> np.ndarray:
    """q [n, P] float64: softmax of ``scores / temperature`` over each row's products not held (0
    where held; a row holding everything is all 0)."""
    logits = np.where(held, -np.inf, np.asarray(scores, "float64") / temperature)
    top = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    total = e.sum(axis=1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def fit_calibration(
    scores: np.ndarray,
    adopted: np.ndarray,
    held: np.ndarray,
    product_ids: list[str],
    temperature: float,
    min_positives: int = MIN_POSITIVES,
    centred: bool = True,
    method: str = "platt",
) -> Calibration:
    """Fit the per-product maps (module docstring) on cosine ``scores`` float [n, P], ``adopted``
    bool [n, P] and ``held`` bool [n, P] (held products are never offered, so they are no data
    for the probability of adopting them). ``method``: "platt" (default) or "isotonic";
    ``centred=False`` keeps the isotonic fit's plain steps."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    scores, adopted, held = np.asarray(scores, "float64"), np.asarray(adopted, bool), np.asarray(held, bool)
    if not scores.shape == adopted.shape == held.shape or scores.shape[1] != len(product_ids):
        raise ValueError("scores, adopted and held must all be [n, P] with P = len(product_ids)")
    eligible = ~held
    if not eligible.any():
        raise ValueError("no customer-product pair to calibrate on (every product is held)")
    q = choice_probabilities(scores, held, temperature)
    fit = _platt_maps if method == "platt" else _isotonic_maps
    knots_x, knots_y, positives, pooled = fit(q, adopted, eligible, min_positives, centred)
    return Calibration(
        list(map(str, product_ids)),
        float(temperature),
        knots_x,
        knots_y,
        customers=int(scores.shape[0]),
        positives=positives,
        pooled=pooled,
        method=method,
    )


def _smoothed_rate(count: int, n: int, base_rate: float) -> float:
    """A rare product's adoption rate, add-one smoothed toward the rate of all products."""
    return (count + base_rate) / (n + 1) if n else base_rate


def _isotonic_maps(q, adopted, eligible, min_positives, centred):
    from sklearn.isotonic import IsotonicRegression

    def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if centred:
            return centred_knots(x, y)
        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
        return model.X_thresholds_.astype("float64"), model.y_thresholds_.astype("float64")

    # The pooled map for rare products: all products' pairs together.
    pooled_x, pooled_y = isotonic(q[eligible], adopted[eligible].astype("float64"))
    base_rate = adopted[eligible].mean()
    knots_x, knots_y, positives, pooled = [], [], [], []
    for j in range(q.shape[1]):
        mask = eligible[:, j]
        x, y = q[mask, j], adopted[mask, j].astype("float64")
        count = int(y.sum())
        positives.append(count)
        if count >= min_positives:
            kx, ky = isotonic(x, y)
            pooled.append(False)
        else:
            # Rare: the pooled shape, rescaled so that its mean over this product's customers
            # equals the product's own (add-one smoothed) adoption rate.
            rate = _smoothed_rate(count, len(y), base_rate)
            shape = np.interp(x, pooled_x, pooled_y).mean() if len(x) else base_rate
            scale = rate / shape if shape > 0 else 0.0
            kx, ky = pooled_x, np.clip(pooled_y * scale, 0.0, 1.0)
            pooled.append(True)
        knots_x.append(kx)
        knots_y.append(ky)
    return knots_x, knots_y, positives, pooled


def _platt_maps(q, adopted, eligible, min_positives, centred):
    z = np.log(np.maximum(q, Q_FLOOR))
    pooled_a, pooled_b = platt_fit(z[eligible], adopted[eligible])
    base_rate = adopted[eligible].mean()
    knots_x, knots_y, positives, pooled = [], [], [], []
    for j in range(q.shape[1]):
        mask = eligible[:, j]
        x, y = z[mask, j], adopted[mask, j]
        count = int(y.sum())
        positives.append(count)
        if count >= min_positives:
            a, b = platt_fit(x, y)
        else:
            # Rare: the pooled slope, and the intercept that gives the product's own (add-one
            # smoothed) adoption rate on average over its customers.
            b = pooled_b
            a = platt_intercept(x, b, _smoothed_rate(count, len(y), base_rate)) if len(x) else pooled_a
        pooled.append(count < min_positives)
        kx, ky = platt_knots(a, b, x.min() if len(x) else np.log(Q_FLOOR))
        knots_x.append(kx)
        knots_y.append(ky)
    return knots_x, knots_y, positives, pooled


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))  # no overflow warning for large |t|


def platt_fit(z: np.ndarray, y: np.ndarray, ridge: float = 1e-3, iterations: int = 100) -> tuple[float, float]:
    """(a, b) of the logistic regression ``P(y) = sigmoid(a + b z)`` by Newton's method (a tiny
    ``ridge`` keeps a separable set finite), with ``b >= 0``: a fit whose slope would come out
    negative (a product the model ranks backwards, or noise) gets ``b = 0``, the product's rate."""
    z, y = np.asarray(z, "float64"), np.asarray(y, "float64")
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6)) if len(y) else 0.5
    theta = np.array([np.log(rate / (1 - rate)), 0.0])
    X = np.stack([np.ones_like(z), z], axis=1)

    def loss(t):
        s = X @ t
        return float(np.sum(np.logaddexp(0.0, s) - y * s) + 0.5 * ridge * t @ t)

    current = loss(theta)
    for _ in range(iterations):
        p = _sigmoid(X @ theta)
        gradient = X.T @ (p - y) + ridge * theta
        hessian = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        t = 1.0
        while t > 1e-8:  # halve the step until the loss does not rise
            candidate = theta - t * step
            value = loss(candidate)
            if value <= current:
                break
            t *= 0.5
        if t <= 1e-8:
            break
        theta, previous, current = candidate, current, value
        if previous - current < 1e-12 * max(1.0, abs(current)):
            break
    a, b = float(theta[0]), float(theta[1])
    if b < 0:
        return float(np.log(rate / (1 - rate))), 0.0
    return a, b


def platt_intercept(z: np.ndarray, b: float, rate: float) -> float:
    """The intercept a with ``mean sigmoid(a + b z) = rate`` (bisection; the mean rises with a)."""
    rate = float(np.clip(rate, 1e-9, 1 - 1e-9))
    low, high = -60.0, 60.0
    for _ in range(100):
        middle = 0.5 * (low + high)
        if _sigmoid(middle + b * z).mean() < rate:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def platt_knots(a: float, b: float, z_low: float) -> tuple[np.ndarray, np.ndarray]:
    """Knots (q, sigmoid(a + b ln q)) spaced evenly in ln q from ``z_low`` (the lowest ln q seen,
    floored at ln 1e-9) to ln 1 = 0; below the first knot np.interp holds its value."""
    z = np.linspace(max(min(float(z_low), -1e-6), np.log(1e-9)), 0.0, PLATT_KNOTS)
    return np.exp(z), _sigmoid(a + b * z)


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

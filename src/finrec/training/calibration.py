"""Calibrated adoption probabilities: from the model's scores to P(customer adopts the product).

A cosine similarity ranks well but is not a probability: a campaign that multiplies it by a
margin, or compares it across products, needs ``P(customer c adopts product p in the period)``.
``Calibration`` holds one monotone, piecewise-linear map per product, fitted on customers the
model was not trained on, with every customer of that set as data, including those who adopted
nothing (zeros for every product)::

    q(c, p)     = softmax over the products c does not hold of cos(c, p) / T
    p_hat(c, p) = f_p(q(c, p)),   f_p(q) = sigmoid(c_p + a_p ln q - b_p ln(1 - q))

where ``T`` is the training temperature and ``y(c, p)`` is 1 when c adopted p in the period of
the data (its ``interactions``) and 0 otherwise. ``q`` is the model's own choice distribution
(what the softmax loss trains): a customer with many attractive products is less likely to take
any one of them, which the bare cosine cannot say; on the default synthetic bank it cut the
squared error against the true probabilities from 0.0040 to 0.0015 (benchmarks/calibration.py).

``f_p`` is beta calibration (Kull, Silva Filho and Flach, AISTATS 2017), the default: the
logistic regression of ``y(c, p)`` on ``ln q`` and ``-ln(1 - q)`` over the customers not holding
p, with ``a_p, b_p >= 0`` so the map never reverses the model's order (customers keep their
order, strictly: a plan picking the best few hundred of a product has no ties to break at
random). ``method="platt"`` drops the second term (Platt scaling on ``ln q``); beta calibration
also bends where ``q`` nears 1 (the next rung of a product ladder), where Platt underestimated.
``method="isotonic"`` is the *centred* isotonic fit (``centred_knots``: each block of the
pool-adjacent-violators fit becomes one knot at its members' mean). Three numbers per product
rather than one step per block: on the development banks (benchmarks/plan_value_study.py,
docs/benchmarks.md) the isotonic map's top blocks, fitted on a few dozen lucky adopters,
overstated exactly the customers a campaign picks (a plan's predicted value 1.11-1.20x its true
value), and plans built on the logistic maps were worth about as much (-0.3% to +1.1% of the
ceiling).

**Customers who adopt nothing.** Where the calibration customers include customers who adopted
nothing, how likely a customer is to adopt *anything* differs from customer to customer (one who
already holds eight products adopts less often than one who holds two), and ``q``, a share of
one choice, cannot say it: a softmax is the same whatever constant is added to a customer's
scores. Such a calibration also holds an adoption model (``LightGBMBaseline`` with
``objective="adoption"``, fitted on the training customers; or, for a model that came without
one, cross-fitted on the calibration customers by ``finrec.training.train.calibrate``) and a map
``g`` of its probability, and factors the probability::

    p_hat(c, p) = g(pi(c)) * f_p(q(c, p)),   g(pi) = sigmoid(c_0 + a_0 logit pi),  a_0 >= 0

with ``f_p`` fitted on the calibration customers who adopted something (P(p | adopts)) and
``g`` on all of them (P(adopts anything)). On a synthetic bank with a past, where adopting at
all falls with the products held, it cut the squared error against the true probabilities by
28% (``benchmarks/calibration.py --months 12``) and raised a capacity-bound plan's true value by
1.2-1.5 points of the ceiling (``benchmarks/plan.py --months 12``, two seeds; docs/benchmarks.md). Callers pass ``g(pi)`` as
``adoption`` (``adoption_probability``); without an adoption model the maps read ``q`` alone.

A product with fewer than ``min_positives`` adoptions in the calibration set gets the pooled map
of all products, at its own (add-one smoothed) adoption rate: the isotonic map rescaled, the
logistic map's slopes with its own intercept. So a rare product is not pinned to 0. Held
products get 0.

The maps are stored as JSON (knots only, never a pickle; a logistic map as ``LOGISTIC_KNOTS``
knots spaced evenly in logit q) and applied with ``np.interp``, so serving needs no
scikit-learn and reads every method the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from finrec.errors import ArtifactError

CALIBRATION_FORMAT = 2
# A calibration with an adoption model is written as format 3, which an older finrec refuses
# (its probabilities would leave out P(adopts anything)); one without stays format 2.
ADOPTION_FORMAT = 3
MIN_POSITIVES = 20
EVENT = "adopts the product within the period the training interactions cover"
METHODS = {  # method -> how calibration.json describes it
    "beta": "beta calibration per product: sigmoid(c + a ln q - b ln(1 - q)), a, b >= 0, "
    "q = softmax(cos / temperature) over products not held",
    "platt": "Platt per product: sigmoid(a + b ln q), q = softmax(cos / temperature) over products not held",
    "isotonic": "centred isotonic per product, on softmax(cos / temperature) over products not held",
}
LOGISTIC_KNOTS = 256
Q_FLOOR = 1e-12  # q of a product the softmax all but rules out
Q_TOP = 1 - 1e-6  # the logistic maps treat q above this as this (a customer with one product left has q = 1)


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
    method: str = "beta"  # how the knots were fitted (METHODS); applying them is the same for all
    # P(adopts anything): the adoption model (``LightGBMBaseline``, objective "adoption") and the
    # knots of ``g``, its probability -> the calibration customers' rate (module docstring).
    # None: every customer in the data adopted something; the maps read q alone.
    adoption_model: Any = None
    adoption_x: np.ndarray | None = None
    adoption_y: np.ndarray | None = None
    # Where the adoption model was fitted: False, on the training customers (``fit``); True, on
    # the calibration customers themselves, cross-fitted (``calibrate`` on a model without one).
    adoption_cross_fitted: bool = False
    # Why ``calibrate`` fitted no adoption model where some customers adopted nothing ("" when it
    # did, or had nothing to say). Said by ``finrec calibrate``; not stored.
    adoption_note: str = field(default="", compare=False)

    @property
    def needs_adoption(self) -> bool:
        """Whether the probabilities take each customer's ``adoption`` (``adoption_probability``)."""
        return self.adoption_model is not None

    def adoption_probability(
        self,
        customers: pd.DataFrame,
        held: np.ndarray,
        history: pd.DataFrame | None = None,
        reference: int | None = None,
    ) -> np.ndarray | None:
        """float64 [n]: ``g(pi(c))``, each customer's P(adopts anything in the period), for
        ``customers`` holding ``held`` (bool [n, P]; ``history`` and ``reference`` as in
        ``LightGBMBaseline.features``); None without an adoption model."""
        if self.adoption_model is None:
            return None
        pi = self.adoption_model.adoption_probability(customers, held=held, history=history, reference=reference)
        return np.interp(pi, self.adoption_x, self.adoption_y)

    def record_adoption_probability(self, record: dict, held: np.ndarray, history: pd.DataFrame | None = None):
        """``adoption_probability`` of one customer given as raw values (float64 [1]); None
        without an adoption model."""
        if self.adoption_model is None:
            return None
        return np.interp(
            self.adoption_model.record_adoption_probability(record, held, history), self.adoption_x, self.adoption_y
        )

    def __call__(self, scores: np.ndarray, held: np.ndarray, adoption: np.ndarray | None = None) -> np.ndarray:
        """Probabilities float32 [n, P] for cosine ``scores`` [n, P] and ``held`` bool [n, P]
        (catalogue order); 0 for held products. ``adoption`` float [n]: the customers'
        ``adoption_probability``, required when the calibration has an adoption model."""
        scores, held = self._rows(scores, held)
        factor = self._adoption_factor(adoption, len(scores))
        q = choice_probabilities(scores, held, self.temperature)
        out = np.empty(scores.shape, dtype=np.float32)
        for j, (x, y) in enumerate(zip(self.knots_x, self.knots_y)):
            out[:, j] = np.interp(q[:, j], x, y)
        if factor is not None:
            out *= factor[:, None]
        out[held] = 0.0
        return out

    def at(
        self, scores: np.ndarray, held: np.ndarray, index: np.ndarray, adoption: np.ndarray | None = None
    ) -> np.ndarray:
        """float32 [n, k]: ``self(scores, held, adoption)`` at the products ``index`` (int [n, k],
        catalogue positions; -1: none, probability 0). Only those products' maps run: a request
        needs the 5 it returns, not all 25 (their ``np.interp`` calls were a sixth of a request's
        time)."""
        (scores, held), index = self._rows(scores, held), np.asarray(index)
        if index.ndim != 2 or len(index) != len(scores) or (index >= len(self.product_ids)).any():
            raise ValueError(f"expected an index [{len(scores)}, k] of catalogue positions or -1, got {index.shape}")
        factor = self._adoption_factor(adoption, len(scores))
        q = choice_probabilities(scores, held, self.temperature)
        out = np.zeros(index.shape, dtype=np.float32)
        if len(index) == 1:  # a request: the same np.interp, one product at a time (no array bookkeeping)
            for slot, j in enumerate(index[0].tolist()):
                if j >= 0 and not held[0, j]:
                    out[0, slot] = np.interp(q[0, j], self.knots_x[j], self.knots_y[j])
        else:
            rows, slots = np.nonzero((index >= 0) & ~np.take_along_axis(held, np.maximum(index, 0), axis=1))
            products = index[rows, slots]
            for j in np.unique(products):
                pick = products == j
                out[rows[pick], slots[pick]] = np.interp(q[rows[pick], j], self.knots_x[j], self.knots_y[j])
        if factor is not None:
            out *= factor[:, None]
        return out

    def _adoption_factor(self, adoption, n: int) -> np.ndarray | None:
        """float32 [n] or None: ``adoption`` checked against the calibration's needs."""
        if self.adoption_model is None:
            return None
        if adoption is None:
            raise ValueError(
                "this calibration multiplies in each customer's P(adopts anything): pass adoption "
                "(Calibration.adoption_probability)"
            )
        adoption = np.asarray(adoption, dtype=np.float32).reshape(-1)
        if len(adoption) != n:
            raise ValueError(f"expected adoption [{n}], got {adoption.shape}")
        return adoption

    def _rows(self, scores: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``scores`` and ``held`` as arrays, checked to be [n, P] both."""
        scores, held = np.asarray(scores), np.asarray(held, dtype=bool)
        if scores.ndim != 2 or scores.shape[1] != len(self.product_ids) or held.shape != scores.shape:
            raise ValueError(
                f"expected scores and held [n, {len(self.product_ids)}], got {scores.shape} and {held.shape}"
            )
        return scores, held

    def to_dict(self) -> dict[str, Any]:
        adoption = {}
        if self.adoption_model is not None:
            adoption = {
                "adoption": {
                    "event": "adopts any product within the period",
                    "x": [float(v) for v in self.adoption_x],
                    "y": [float(v) for v in self.adoption_y],
                    "model": self.adoption_model.to_dict(),
                    # Absent in files written before it existed: fitted on the training customers.
                    **({"cross_fitted": True} if self.adoption_cross_fitted else {}),
                }
            }
        return {
            "format": ADOPTION_FORMAT if adoption else CALIBRATION_FORMAT,
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
            **adoption,
        }

    @classmethod
    def from_dict(cls, raw: Any, source: str = "calibration.json") -> Calibration:
        try:
            if raw["format"] not in (CALIBRATION_FORMAT, ADOPTION_FORMAT):
                raise ArtifactError(f"{source}: calibration format {raw['format']!r} is not supported")
            adoption = raw.get("adoption") if raw["format"] == ADOPTION_FORMAT else None
            if raw["format"] == ADOPTION_FORMAT and not isinstance(adoption, dict):
                raise ValueError("format 3 needs its adoption model")
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
            if adoption is not None:
                from finrec.training.trees import LightGBMBaseline

                calibration.adoption_x = np.asarray(adoption["x"], dtype="float64")
                calibration.adoption_y = np.asarray(adoption["y"], dtype="float64")
                calibration.adoption_model = LightGBMBaseline.from_dict(adoption["model"])
                calibration.adoption_cross_fitted = adoption.get("cross_fitted", False) is True
                if calibration.adoption_model.objective != "adoption":
                    raise ValueError("the adoption model is not one")
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{source}: damaged calibration ({type(exc).__name__}: {exc})") from None
        names = [f"product {pid!r}" for pid in calibration.product_ids]
        maps = list(zip(names, knots_x, knots_y))
        if calibration.adoption_model is not None:
            maps.append(("adopting anything", calibration.adoption_x, calibration.adoption_y))
        for name, x, y in maps:
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
                raise ArtifactError(f"{source}: the map of {name} is not a non-decreasing map into [0, 1]")
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
    # The same operations as np.where / exp / divide, in place in one float64 buffer: a plan
    # scores a million customers x the catalogue through here.
    q = np.divide(scores, temperature, dtype=np.float64)
    q[np.asarray(held, dtype=bool)] = -np.inf
    top = q.max(axis=1, keepdims=True)
    q -= np.where(np.isfinite(top), top, 0.0)
    np.exp(q, out=q)
    total = q.sum(axis=1, keepdims=True)
    np.divide(q, total, out=q, where=total > 0)
    q[~(total[:, 0] > 0)] = 0.0
    return q


def fit_calibration(
    scores: np.ndarray,
    adopted: np.ndarray,
    held: np.ndarray,
    product_ids: list[str],
    temperature: float,
    min_positives: int = MIN_POSITIVES,
    centred: bool = True,
    method: str = "beta",
    adoption_model: Any = None,
    adoption: np.ndarray | None = None,
) -> Calibration:
    """Fit the per-product maps (module docstring) on cosine ``scores`` float [n, P], ``adopted``
    bool [n, P] and ``held`` bool [n, P] (held products are never offered, so they are no data
    for the probability of adopting them). ``method``: "beta" (default), "platt" or "isotonic";
    ``centred=False`` keeps the isotonic fit's plain steps.

    ``adoption_model`` (objective "adoption", fitted on other customers) with ``adoption`` float
    [n], its probability for these customers: ``g`` is fitted on every customer, the product
    maps on those who adopted something (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    scores, adopted, held = np.asarray(scores, "float64"), np.asarray(adopted, bool), np.asarray(held, bool)
    if not scores.shape == adopted.shape == held.shape or scores.shape[1] != len(product_ids):
        raise ValueError("scores, adopted and held must all be [n, P] with P = len(product_ids)")
    eligible = ~held
    if not eligible.any():
        raise ValueError("no customer-product pair to calibrate on (every product is held)")
    if (adoption_model is None) != (adoption is None):
        raise ValueError("adoption_model and adoption go together")
    adoption_x = adoption_y = None
    customers = int(scores.shape[0])  # every customer is data: for g, or for the maps without it
    if adoption is not None:
        adoption = np.asarray(adoption, dtype="float64").reshape(-1)
        if len(adoption) != len(scores):
            raise ValueError(f"expected adoption [{len(scores)}], got {adoption.shape}")
        adoption_x, adoption_y = adoption_knots(adoption, adopted.any(axis=1))
        # The product maps: P(p | the customer adopts something), on those who did.
        some = adopted.any(axis=1)
        scores, adopted, held, eligible = scores[some], adopted[some], held[some], eligible[some]
        if not eligible.any():
            raise ValueError("no customer who adopted something to calibrate the products on")
    q = choice_probabilities(scores, held, temperature)
    fit = _isotonic_maps if method == "isotonic" else _logistic_maps(method)
    knots_x, knots_y, positives, pooled = fit(q, adopted, eligible, min_positives, centred)
    return Calibration(
        list(map(str, product_ids)),
        float(temperature),
        knots_x,
        knots_y,
        customers=customers,
        positives=positives,
        pooled=pooled,
        method=method,
        adoption_model=adoption_model,
        adoption_x=adoption_x,
        adoption_y=adoption_y,
    )


def adoption_knots(pi: np.ndarray, adopted_any: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The knots of ``g``: Platt scaling of the adoption model's probabilities ``pi`` [n] to
    whether each customer adopted anything (bool [n]), ``sigmoid(c + a logit pi)`` with ``a >=
    0``, on ``LOGISTIC_KNOTS`` values of pi from the lowest seen. The model is already fitted to
    this event; the map carries it to the calibration customers' own rate (a later period's, when
    ``finrec calibrate`` refits it on new data)."""
    pi = np.clip(np.asarray(pi, dtype="float64"), Q_FLOOR, Q_TOP)
    logit = np.log(pi) - np.log1p(-pi)
    c, w = logistic_fit(logit[:, None], np.asarray(adopted_any, dtype="float64"))
    grid = knot_grid(pi.min() if len(pi) else Q_FLOOR)
    return grid, _sigmoid(c + (np.log(grid) - np.log1p(-grid)) * w[0])


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


def logistic_features(q: np.ndarray, method: str) -> np.ndarray:
    """[..., d] inputs of the logistic maps: ``ln q`` (Platt), and ``-ln(1 - q)`` beside it (beta)."""
    q = np.clip(q, Q_FLOOR, Q_TOP)
    columns = [np.log(q)] if method == "platt" else [np.log(q), -np.log1p(-q)]
    return np.stack(columns, axis=-1)


def _logistic_maps(method):
    def fit(q, adopted, eligible, min_positives, centred):
        X = logistic_features(q, method)  # [n, P, d]
        pooled_c, pooled_w = logistic_fit(X[eligible], adopted[eligible])
        base_rate = adopted[eligible].mean()
        knots_x, knots_y, positives, pooled = [], [], [], []
        for j in range(q.shape[1]):
            mask = eligible[:, j]
            x, y = X[mask, j], adopted[mask, j]
            count = int(y.sum())
            positives.append(count)
            if count >= min_positives:
                c, w = logistic_fit(x, y)
            else:
                # Rare: the pooled slopes, and the intercept that gives the product's own (add-one
                # smoothed) adoption rate on average over its customers.
                w = pooled_w
                c = logistic_intercept(x @ w, _smoothed_rate(count, len(y), base_rate)) if len(y) else pooled_c
            pooled.append(count < min_positives)
            grid = knot_grid(q[mask, j].min() if mask.any() else Q_FLOOR)
            knots_x.append(grid)
            knots_y.append(_sigmoid(c + logistic_features(grid, method) @ w))
        return knots_x, knots_y, positives, pooled

    return fit


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))  # no overflow warning for large |t|


def logistic_fit(X: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> tuple[float, np.ndarray]:
    """(c, w) of the logistic regression ``P(y) = sigmoid(c + X w)`` (X [n, d]) with every
    ``w >= 0``, so the map never reverses the model's order: a weight that comes out negative is
    fixed at 0 and the rest refitted (all at 0: the product's rate)."""
    X, y = np.asarray(X, "float64"), np.asarray(y, "float64")
    free = np.ones(X.shape[1], dtype=bool)
    while True:
        c, w = _newton_logistic(X[:, free], y, ridge)
        if (w >= 0).all():
            out = np.zeros(X.shape[1])
            out[free] = w
            return c, out
        keep = np.flatnonzero(free)
        free[keep[w < 0]] = False


def _newton_logistic(X: np.ndarray, y: np.ndarray, ridge: float, iterations: int = 100) -> tuple[float, np.ndarray]:
    """Newton's method with step halving on the log loss plus ``ridge / 2 * |theta|^2`` (which
    keeps a separable set finite); the intercept starts at the rate's logit."""
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6)) if len(y) else 0.5
    A = np.concatenate([np.ones((len(y), 1)), X], axis=1)
    theta = np.zeros(A.shape[1])
    theta[0] = np.log(rate / (1 - rate))
    if A.shape[1] == 1 or not len(y):
        return float(theta[0]), theta[1:]

    def loss(t):
        s = A @ t
        return float(np.sum(np.logaddexp(0.0, s) - y * s) + 0.5 * ridge * t @ t)

    current = loss(theta)
    for _ in range(iterations):
        p = _sigmoid(A @ theta)
        gradient = A.T @ (p - y) + ridge * theta
        hessian = (A * (p * (1 - p))[:, None]).T @ A + ridge * np.eye(A.shape[1])
        step = np.linalg.solve(hessian, gradient)
        t = 1.0
        while t > 1e-8:  # halve the step until the loss does not rise
            value = loss(theta - t * step)
            if value <= current:
                break
            t *= 0.5
        if t <= 1e-8:
            break
        theta, previous, current = theta - t * step, current, value
        if previous - current < 1e-12 * max(1.0, abs(current)):
            break
    return float(theta[0]), theta[1:]


def logistic_intercept(s: np.ndarray, rate: float) -> float:
    """The intercept c with ``mean sigmoid(c + s) = rate`` (bisection; the mean rises with c)."""
    rate = float(np.clip(rate, 1e-9, 1 - 1e-9))
    low, high = -60.0, 60.0
    for _ in range(100):
        middle = 0.5 * (low + high)
        if _sigmoid(middle + s).mean() < rate:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def knot_grid(q_low: float) -> np.ndarray:
    """``LOGISTIC_KNOTS`` values of q spaced evenly in logit q from ``q_low`` (the lowest q seen,
    floored at 1e-9) to ``Q_TOP``: dense at both ends, where ln q and ln(1 - q) move fast. Outside
    the knots np.interp holds the end values."""
    low = max(min(float(q_low), 0.5), 1e-9)
    u = np.linspace(np.log(low / (1 - low)), np.log(Q_TOP / (1 - Q_TOP)), LOGISTIC_KNOTS)
    return _sigmoid(u)


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


def log_loss(predicted: np.ndarray, outcome: np.ndarray) -> float:
    """-mean(y ln p + (1 - y) ln(1 - p)) over the pairs, p clipped to [1e-12, 1 - 1e-12]."""
    p = np.clip(np.asarray(predicted, "float64").ravel(), 1e-12, 1 - 1e-12)
    y = np.asarray(outcome, "float64").ravel()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))

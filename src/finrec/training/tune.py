"""``finrec tune``: a time-budgeted, seeded random search over the configuration fields that
matter, judged on the validation split of the user's own training data.

Defaults chosen on one bank do not carry to the next; a bank that benchmarks finrec against its
own tuned gradient-boosted model should tune finrec too. Every trial is one ``fit`` (the one
fit routine) with the same ``training.seed``, hence the same validation customers: its score is
the best validation nDCG@k that early stopping saw. Trial 0 is the base configuration itself, so
the search never returns something worse than what it started from (on that split).

>>> result = tune(dataset, Config(), budget_seconds=600, seed=0)
>>> result.best.to_dict(), result.rows        # the config to train with, and the trial table

Random search rather than a model-based one: with the 5-20 trials a budget of minutes allows it
is as good (Bergstra & Bengio, 2012) and needs no new dependency.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finrec.config import Config, checked
from finrec.errors import ConfigError

log = logging.getLogger(__name__)


def _log_uniform(low: float, high: float):
    return lambda rng: float(round(math.exp(rng.uniform(math.log(low), math.log(high))), 6))


def _choice(*values):
    return lambda rng: values[int(rng.integers(len(values)))]


# section.field -> sampler(rng). Widths are drawn as one shape for both towers' hidden layers.
SPACE: dict[str, Callable[[np.random.Generator], Any]] = {
    "training.learning_rate": _log_uniform(1e-3, 2e-2),
    "training.temperature": _log_uniform(0.05, 0.3),
    "training.weight_decay": _log_uniform(1e-5, 1e-2),
    "training.batch_size": _choice(256, 512, 1024),
    "model.dropout": _choice(0.0, 0.1, 0.2, 0.3),
    "model.customer_widths": _choice((128, 64), (256, 128), (64, 32), (256, 128, 64)),
    "model.embedding_dim": _choice(16, 32, 64),
    "model.numeric_encoding": _choice("none", "ple", "periodic"),
    "model.numeric_bins": _choice(8, 16, 32),
    "model.ensemble_size": _choice(1, 2, 4),
    "training.distill": _choice(0.0, 0.5, 0.8, 0.9),
    "model.split_bins": _choice(0, 8),
}


@dataclass
class TuneResult:
    """``best``: the winning config; ``rows``: one dict per trial (``trial``, ``score``,
    ``seconds``, ``epochs``, the blend weight the fit chose where it tried one, the sampled
    fields), in the order run. ``score`` is ``trial_score``: the validation nDCG of the scores
    the model ships, blended where a tree blend was tried."""

    best: Config
    best_score: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    metric: str = "val_ndcg@5"


def sample_config(base: Config, rng: np.random.Generator) -> tuple[Config, dict[str, Any]]:
    """A random neighbour of ``base`` from ``SPACE``: (the config, the values drawn)."""
    drawn = {name: sampler(rng) for name, sampler in SPACE.items()}
    model = {k.split(".", 1)[1]: v for k, v in drawn.items() if k.startswith("model.")}
    training = {k.split(".", 1)[1]: v for k, v in drawn.items() if k.startswith("training.")}
    model["product_widths"] = model["customer_widths"]
    config = dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, **model),
        training=dataclasses.replace(base.training, **training),
    )
    return config.validate(), drawn


def _values_of(config: Config) -> dict[str, Any]:
    plain = config.to_dict()
    return {name: plain[name.split(".")[0]][name.split(".")[1]] for name in SPACE}


def trial_score(history: dict[str, list[float]], k: int) -> float:
    """A trial's validation nDCG@k: of the scores the model ships, so the blended score where
    the fit tried a tree blend (``blend_val_ndcg@k``, the chosen weight's, 0 included), else
    the towers' best epoch (``val_ndcg@k``); NaN without either."""
    blended = history.get(f"blend_val_ndcg@{k}", [])
    if blended:
        return float(blended[0])
    towers = history.get(f"val_ndcg@{k}", [])
    return float(max(towers)) if towers else float("nan")


def tune(
    dataset,
    base: Config | None = None,
    budget_seconds: float = 600.0,
    max_trials: int | None = None,
    seed: int = 0,
    fit_fn: Callable | None = None,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> TuneResult:
    """Run trials until ``budget_seconds`` would be exceeded by one more (estimated as the
    slowest trial so far) or ``max_trials`` are done; at least the base trial always runs.
    ``seed`` draws the configurations; every trial trains with ``base.training.seed``.
    ``fit_fn(dataset, config)`` -> a ``TrainedModel`` (``training.fit`` by default)."""
    if not (isinstance(budget_seconds, (int, float)) and math.isfinite(budget_seconds) and budget_seconds > 0):
        raise ConfigError(f"tune: the budget must be a positive number of seconds, got {budget_seconds!r}")
    if max_trials is not None and max_trials < 1:
        raise ConfigError(f"tune: the number of trials must be at least 1, got {max_trials!r}")
    if fit_fn is None:
        from finrec.training.train import fit

        def fit_fn(data, config):
            # A trial is judged on its validation score alone: no calibration, no refit.
            return fit(data, config, verbose=0, finish=False)

    base = checked(base)
    metric = f"val_ndcg@{base.training.eval_k}"
    rng = np.random.default_rng(seed)
    start = clock()
    slowest = 0.0
    result = TuneResult(best=base, best_score=-math.inf, metric=metric)
    trial = 0
    while True:
        if trial and (max_trials is not None and trial >= max_trials):
            break
        if trial and clock() - start + slowest > budget_seconds:
            break
        config, drawn = (base, _values_of(base)) if trial == 0 else sample_config(base, rng)
        began = clock()
        trained = fit_fn(dataset, config)
        seconds = clock() - began
        slowest = max(slowest, seconds)
        score = trial_score(trained.history, base.training.eval_k)
        row = {"trial": trial, "score": score, "seconds": round(seconds, 2), "epochs": len(trained.history["loss"])}
        if "tree_blend_weight" in trained.history:
            row["tree_blend_weight"] = trained.history["tree_blend_weight"][0]
            row["tree_blend_cold_weight"] = trained.history.get("tree_blend_cold_weight", [0.0])[0]
        row.update({k: list(v) if isinstance(v, tuple) else v for k, v in drawn.items()})
        result.rows.append(row)
        if score > result.best_score:  # NaN never wins
            result.best, result.best_score = config, score
        # debug: ``finrec tune`` prints each trial's line itself (on a terminal it came twice).
        log.debug("trial %d: %s %.4f in %.1fs", trial, metric, score, seconds)
        if progress is not None:
            progress(row)
        trial += 1
    return result


__all__ = ["SPACE", "TuneResult", "sample_config", "trial_score", "tune"]

"""finrec tune: the budgeted random search (with a stand-in fit and clock) and the CLI command
(one real, tiny trial)."""

from __future__ import annotations

import csv
import json
import types

import numpy as np
import pytest

from finrec.cli import main
from finrec.config import Config
from finrec.errors import ConfigError
from finrec.training.tune import SPACE, sample_config, tune


class FakeRun:
    """A fit that takes ``seconds`` on a fake clock and scores configs by their learning rate."""

    def __init__(self, seconds: float = 10.0):
        self.now, self.seconds, self.seen = 0.0, seconds, []

    def clock(self) -> float:
        return self.now

    def fit(self, dataset, config):
        self.now += self.seconds
        self.seen.append(config)
        score = 0.5 - abs(config.training.learning_rate - 0.004)
        return types.SimpleNamespace(history={"loss": [1.0, 0.9], "val_ndcg@5": [score - 0.1, score]})


def test_budget_bounds_the_trials_and_the_best_wins():
    run = FakeRun(seconds=10.0)
    result = tune("data", Config(), budget_seconds=45, seed=3, fit_fn=run.fit, clock=run.clock)
    # trials end at 10, 20, 30, 40 s; a fifth would end past 45 s
    assert len(result.rows) == 4 and run.now <= 45
    assert run.seen[0] == Config()  # trial 0: the base config itself
    scores = [r["score"] for r in result.rows]
    assert result.best_score == max(scores)
    assert result.best == run.seen[scores.index(max(scores))]
    assert set(SPACE) <= set(result.rows[1])


def test_the_search_is_seeded_and_max_trials_caps_it():
    a, b = FakeRun(), FakeRun()
    ra = tune("d", Config(), 1e9, max_trials=3, seed=7, fit_fn=a.fit, clock=a.clock)
    rb = tune("d", Config(), 1e9, max_trials=3, seed=7, fit_fn=b.fit, clock=b.clock)
    assert len(ra.rows) == 3 and a.seen == b.seen and ra.rows == rb.rows
    c = FakeRun()
    tune("d", Config(), 1e9, max_trials=3, seed=8, fit_fn=c.fit, clock=c.clock)
    assert c.seen[1:] != a.seen[1:]


def test_a_budget_below_one_trial_still_runs_the_base():
    run = FakeRun(seconds=100.0)
    result = tune("d", Config(), 1.0, fit_fn=run.fit, clock=run.clock)
    assert len(result.rows) == 1 and result.best == Config()


def test_sampled_configs_are_valid():
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(30):
        config, drawn = sample_config(Config(), rng)
        assert config.model.customer_widths == config.model.product_widths == drawn["model.customer_widths"]


@pytest.mark.parametrize("budget", [0, -5, float("nan"), float("inf")])
def test_bad_budget_is_a_config_error(budget):
    with pytest.raises(ConfigError, match="budget"):
        tune("d", Config(), budget, fit_fn=FakeRun().fit)


@pytest.mark.parametrize("budget", ["0", "-1", "soon", "inf"])
def test_cli_bad_budget_exits_2(tmp_path, capsys, budget):
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--data", str(tmp_path), "--out", str(tmp_path / "t"), "--budget", budget])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--budget" in err and "positive" in err and "Traceback" not in err


def test_cli_refuses_to_write_over_its_data(small_data_dir, capsys):
    code = main(["tune", "--data", str(small_data_dir), "--out", str(small_data_dir), "--budget", "10"])
    assert code == 2 and "--out" in capsys.readouterr().err


def test_cli_tiny_run_writes_a_loadable_config(tmp_path, small_data_dir, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(
        "model: {customer_widths: [16], product_widths: [16], embedding_dim: 8}\ntraining: {epochs: 1, patience: 1}\n"
    )
    out = tmp_path / "tuned"
    code = main(["tune", "--data", str(small_data_dir), "--out", str(out), "--budget", "1", "--config", str(base)])
    assert code == 0, capsys.readouterr().err
    best = Config.from_yaml(out / "config.yaml")
    assert best == Config.from_yaml(base)  # one trial fits the budget: the base
    table = json.loads((out / "trials.json").read_text())
    assert table["metric"] == "val_ndcg@5" and len(table["trials"]) == 1
    assert 0 < table["trials"][0]["score"] <= 1
    with open(out / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and float(rows[0]["score"]) == pytest.approx(table["trials"][0]["score"])


def test_a_trial_is_scored_by_the_scores_it_ships():
    from finrec.training.tune import trial_score

    towers = {"val_ndcg@5": [0.50, 0.55, 0.54]}
    assert trial_score(towers, 5) == 0.55  # the towers' best epoch
    # A fit that tried a tree blend ships the blended score: its validation figure decides.
    assert trial_score({**towers, "blend_val_ndcg@5": [0.58], "tree_blend_weight": [0.4]}, 5) == 0.58
    assert trial_score({**towers, "blend_val_ndcg@5": [0.55], "tree_blend_weight": [0.0]}, 5) == 0.55
    assert np.isnan(trial_score({"loss": [1.0]}, 5))


def test_tune_ranks_blended_trials_by_the_blend():
    class Blended(FakeRun):
        def fit(self, data, config):
            trained = super().fit(data, config)
            # The towers' figure says trial 0 wins; the blended figure says the last one does.
            trained.history["blend_val_ndcg@5"] = [0.1 * len(self.seen)]
            trained.history["tree_blend_weight"] = [0.5]
            return trained

    run = Blended()
    result = tune("d", Config(), 1e9, max_trials=3, seed=1, fit_fn=run.fit, clock=run.clock)
    assert [row["score"] for row in result.rows] == pytest.approx([0.1, 0.2, 0.3])
    assert result.best_score == pytest.approx(0.3) and all(row["tree_blend_weight"] == 0.5 for row in result.rows)


@pytest.mark.slow
def test_a_trial_stops_once_the_validation_has_judged_it(small_dataset, fast_config, monkeypatch):
    # A trial's model is thrown away once scored: it is neither calibrated nor given an adoption
    # model, and its validation score is the full fit's.
    from finrec.training import train as T
    from finrec.training.tune import trial_score

    config = fast_config.with_overrides(epochs=1)
    full = T.fit(small_dataset, config, verbose=0)
    trial = T.fit(small_dataset, config, verbose=0, finish=False)
    assert full.calibration is not None and full.calibration.needs_adoption and trial.calibration is None
    k = config.training.eval_k
    assert trial_score(trial.history, k) == trial_score(full.history, k) and not np.isnan(trial_score(full.history, k))
    seen = []
    real = T.fit
    monkeypatch.setattr(T, "fit", lambda *a, **kw: seen.append(kw.get("finish")) or real(*a, **kw))
    tune(small_dataset, config, budget_seconds=600, max_trials=1)
    assert seen == [False]

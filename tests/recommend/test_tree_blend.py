"""A tree blend (``model.tree_blend``, ``finrec.training.trees.TreeBlend``) ranks the same through
every path: training's scores, the numpy recommender (by id and by raw features), a saved and
loaded model, and batch scoring in chunks with a history."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from finrec.config import Config, ModelConfig, TrainConfig
from finrec.data import schema as S
from finrec.recommend.recommender import Recommender


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """A bank with a past where most customers lack the latest snapshot: a chunk's own latest
    month is then older than the table's, which the trees' lags must not take as "now"."""
    from finrec.data.io import load_dataset, write_dataset
    from finrec.data.synthetic import GeneratorSettings, generate

    tables = generate(GeneratorSettings(n_customers=900, seed=4, months=5))
    history = tables[S.HOLDINGS_HISTORY]
    latest = history[S.AS_OF] == history[S.AS_OF].max()
    keep = set(history[S.CUSTOMER_ID][latest].iloc[:40])
    tables[S.HOLDINGS_HISTORY] = history[~latest | history[S.CUSTOMER_ID].isin(keep)].reset_index(drop=True)
    folder = write_dataset(tables, S.SYNTHETIC.schema(), tmp_path_factory.mktemp("blend") / "bank")
    return folder, load_dataset(folder)


def small_config(tree_blend: str) -> Config:
    return Config(
        model=ModelConfig(customer_widths=(32,), product_widths=(32,), embedding_dim=16, tree_blend=tree_blend),
        training=TrainConfig(epochs=2, batch_size=128, distill=0.0, min_steps_per_epoch=0),
    ).validate()


@pytest.fixture(scope="module")
def blended(bank):
    """A model trained with ``tree_blend: always`` whose blend weight is forced to 0.5 (the
    validation customers of so small a bank may pick 0, which is no blend to test)."""
    from finrec.training import train

    _, data = bank
    trained = train.fit(data, small_config("never"), verbose=0)
    teacher = train.fit_teacher(data, 0, history_lags=trained.config.model.history_lags)
    trained.blend = train.choose_blend(trained, teacher, data.subset_customers(_adopters(data)[:200]), weights=(0.5,))
    assert trained.blend is not None and trained.blend.weight == 0.5
    return trained


def _adopters(data) -> np.ndarray:
    return np.sort(data.interactions[S.CUSTOMER_ID].astype(str).unique())


def _unit(teacher, cosine: np.ndarray, logits: np.ndarray, temperature: float) -> np.ndarray:
    """The blend's part at weight 1, by hand: temperature x the trees' logit, and for a product
    the teacher never saw adopted (this small bank has several) the towers' cosine less its mean
    over the products the teacher knows."""
    known = np.zeros(cosine.shape[1], dtype=bool)
    known[teacher.classes_] = True
    unit = logits * temperature
    unit[:, ~known] = cosine[:, ~known] - cosine[:, known].mean(axis=1, keepdims=True)
    return unit


def test_fit_tries_a_blend_only_where_asked(bank, trained, monkeypatch):
    from finrec.training import train

    _, data = bank
    calls = []
    real = train.choose_blend

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "choose_blend", spy)
    auto = ModelConfig(tree_blend="auto")
    assert train.wants_blend(auto, data) and not train.wants_blend(ModelConfig(tree_blend="never"), data)
    assert not train.wants_blend(ModelConfig(tree_blend="auto", history_encoder="none"), data)  # no history read
    without_history = type(data)(**{**vars(data), "holdings_history": None})
    assert not train.wants_blend(auto, without_history)
    # The default tries it on every bank: the validation customers choose the weight (0: none).
    assert ModelConfig().tree_blend == "always" and train.wants_blend(ModelConfig(), without_history)
    fitted = train.fit(data, small_config("auto"), verbose=0)
    assert calls == [1] and "tree_blend_weight" in fitted.history
    assert (fitted.blend is None) == (fitted.history["tree_blend_weight"][0] == 0.0)
    # The session's model (tree_blend auto, no history) has no blend and never fitted one.
    assert trained.blend is None and "tree_blend_weight" not in trained.history


def test_the_chosen_weight_is_the_best_on_the_validation_customers(bank, blended):
    from finrec.evaluate.metrics import summarize
    from finrec.training import train

    _, data = bank
    val = data.subset_customers(_adopters(data)[200:500])
    # A quarter of them hold nothing (and have no past), as new customers do.
    new = val.customers[S.CUSTOMER_ID].iloc[::4]
    val = dataclasses.replace(
        val,
        holdings=val.holdings[~val.holdings[S.CUSTOMER_ID].isin(new)],
        holdings_history=val.holdings_history[~val.holdings_history[S.CUSTOMER_ID].isin(new)],
    )
    teacher = blended.blend.teacher
    assert train.choose_blend(blended, teacher, val, weights=(0.0,)) is None
    weights = (0.0, 0.3, 0.6, 0.9)
    chosen = train.choose_blend(blended, teacher, val, weights=weights)
    ids = val.customers[S.CUSTOMER_ID].to_numpy()
    pipeline = blended.pipeline
    relevant = pipeline.holdings_matrix(ids, val.interactions)
    excluded = pipeline.holdings_matrix(ids, val.holdings) & ~relevant
    temperature = blended.config.training.temperature

    def ndcgs(holdings, history, cold=None):
        # The towers' own cosine, not the blend ``blended`` already carries.
        cosine = blended.customer_embeddings(val.customers, holdings, history) @ blended.product_embeddings_.T
        unit = _unit(teacher, cosine, teacher.logits(val.customers, holdings, history), temperature)
        empty = ~pipeline.holdings_matrix(ids, holdings).any(axis=1)
        found = []
        for w in weights:
            row = np.where(empty & (w > 0), w if cold is None else cold, w)[:, None]
            found.append(summarize((1 - row) * cosine + row * unit, relevant, excluded, k=5)["ndcg@5"])
        return found

    # New customers' weight: the same customers with nothing held and no history.
    found_cold = ndcgs(None, None)
    cold = weights[int(np.argmax(found_cold))]
    found = ndcgs(val.holdings, val.holdings_history, cold)
    best = weights[int(np.argmax(found))]
    assert (chosen.weight if chosen is not None else 0.0) == best
    # Recorded where a blend ships; without one every customer ranks by the towers.
    assert blended.history["tree_blend_cold_weight"] == [cold if best > 0 else 0.0]
    if chosen is not None:
        assert chosen.cold_weight == cold
    # The shipped score's validation figure is recorded for `finrec tune` to rank trials by.
    assert blended.history["blend_val_ndcg@5"] == [pytest.approx(max(found), abs=1e-6)]
    # The new customers' weight moves the figures of the others' (this test can tell).
    assert found != ndcgs(val.holdings, val.holdings_history)


def test_blended_scores_agree_on_every_path(bank, blended, tmp_path):
    from finrec.artifacts import BLEND_FILE, load_model_dir, save_model_dir

    folder, data = bank
    want = blended.score(data.customers, data.holdings, data.holdings_history)
    cosine = blended.customer_embeddings(data.customers, data.holdings, data.holdings_history)
    cosine = cosine @ blended.product_embeddings_.T
    assert np.abs(want - cosine).max() > 0.01  # the trees move the scores
    rec = Recommender(blended, data)
    context = rec._known
    objected = context.attributes["objected"]
    assert objected.any() and (~objected).sum() > 500
    np.testing.assert_allclose(rec.scores(context)[~objected], want[~objected], atol=1e-5)
    # Objectors are not profiled by the trees either, in serving nor in training's scores.
    assert (context.tree[objected] == 0).all() and np.abs(context.tree[~objected]).max() > 0
    # (Nor is a launch's part filled for them: they rank by the towers' cosine alone.)
    np.testing.assert_allclose(want[objected], (1 - blended.blend.weight) * cosine[objected], atol=1e-6)

    save_model_dir(blended, tmp_path / "model")
    raw = json.loads((tmp_path / "model" / BLEND_FILE).read_text())
    assert raw["weight"] == 0.5 and "pandas_categorical" in raw["teacher"]["booster"]
    loaded = Recommender(load_model_dir(tmp_path / "model").trained, data)
    np.testing.assert_array_equal(loaded.scores(loaded._known), rec.scores(context))

    # One customer by id and the same customer as raw values, holdings and history: one ranking.
    row = int(np.flatnonzero(~objected & (data.customers[S.CUSTOMER_ID].isin(data.holdings_history[S.CUSTOMER_ID])))[0])
    cid = str(data.customers[S.CUSTOMER_ID].iloc[row])
    record = data.customers.iloc[row].to_dict()
    record["holdings"] = data.holdings[data.holdings[S.CUSTOMER_ID] == cid][S.PRODUCT_ID].tolist()
    past = data.holdings_history[data.holdings_history[S.CUSTOMER_ID] == cid]
    record["history"] = [{"product_id": p, "as_of": str(d.date())} for p, d in zip(past[S.PRODUCT_ID], past[S.AS_OF])]
    by_id, by_values = rec.recommend(cid, k=5), rec.recommend(record, k=5)
    assert [i.product_id for i in by_id.items] == [i.product_id for i in by_values.items]
    np.testing.assert_allclose([i.score for i in by_id.items], [i.score for i in by_values.items], atol=1e-5)


def test_customers_who_hold_nothing_are_blended_with_the_cold_weight_on_every_path(bank, blended, tmp_path):
    from finrec.artifacts import BLEND_FILE, load_model_dir, save_model_dir

    _, data = bank
    new = data.customers[S.CUSTOMER_ID].iloc[::4]
    data = dataclasses.replace(
        data,
        holdings=data.holdings[~data.holdings[S.CUSTOMER_ID].isin(new)],
        holdings_history=data.holdings_history[~data.holdings_history[S.CUSTOMER_ID].isin(new)],
    )
    model = dataclasses.replace(blended, blend=dataclasses.replace(blended.blend, cold_weight=0.1))
    want = model.score(data.customers, data.holdings, data.holdings_history)
    cosine = model.customer_embeddings(data.customers, data.holdings, data.holdings_history)
    cosine = cosine @ model.product_embeddings_.T
    ids = data.customers[S.CUSTOMER_ID].to_numpy()
    held = model.pipeline.holdings_matrix(ids, data.holdings)
    trees = model.blend.teacher.logits(data.customers, held=held, history=data.holdings_history)
    rec = Recommender(model, data)
    objected = rec._known.attributes["objected"]
    empty, temperature = ~held.any(axis=1), model.config.training.temperature
    assert (empty & ~objected).sum() > 100 and (~empty & ~objected).sum() > 100
    for rows, w in ((empty & ~objected, 0.1), (~empty & ~objected, 0.5)):
        unit = _unit(model.blend.teacher, cosine, trees, temperature)
        np.testing.assert_allclose(want[rows], (1 - w) * cosine[rows] + w * unit[rows], atol=1e-5)
    np.testing.assert_allclose(rec.scores(rec._known), want, atol=1e-5)
    save_model_dir(model, tmp_path / "model")
    assert json.loads((tmp_path / "model" / BLEND_FILE).read_text())["cold_weight"] == 0.1
    loaded = Recommender(load_model_dir(tmp_path / "model").trained, data)
    np.testing.assert_array_equal(loaded.scores(loaded._known), rec.scores(rec._known))
    # A new customer given by raw values, nothing held and no history: the cold weight too.
    row = int(np.flatnonzero(empty & ~objected)[0])
    by_values = rec.recommend(data.customers.iloc[row].to_dict(), k=5)
    top = np.argsort(-want[row], kind="stable")[:5]
    assert [i.product_id for i in by_values.items] == [model.pipeline.product_ids_[j] for j in top]
    np.testing.assert_allclose([i.score for i in by_values.items], want[row, top], atol=1e-5)


def test_a_launch_is_scored_by_the_towers_on_every_path(bank, tmp_path):
    # A product nobody adopted or held in training (a launch): the teacher has no logit for it,
    # so its part is the towers' logit centred as the trees' are (TreeBlend.with_launches), in
    # training's scores, the recommender, the choice of the weight and a saved model alike.
    from finrec.artifacts import load_model_dir, save_model_dir
    from finrec.data.io import dataset_tables, write_dataset
    from finrec.recommend.batch import score_dataset
    from finrec.training import train

    _, data = bank
    launch = "TD_12M"
    data = dataclasses.replace(
        data,
        **{
            name: getattr(data, name)[getattr(data, name)[S.PRODUCT_ID].astype(str) != launch]
            for name in ("interactions", "holdings", "holdings_history")
        },
    )
    trained = train.fit(data, small_config("never"), verbose=0)
    teacher = train.fit_teacher(data, 0, history_lags=trained.config.model.history_lags)
    trained.blend = train.choose_blend(trained, teacher, data.subset_customers(_adopters(data)[:200]), weights=(0.5,))
    j = trained.pipeline.product_ids_.index(launch)
    launches = trained.blend.launches()
    assert launches[j]  # (with the products this small bank never saw adopted)
    want = trained.score(data.customers, data.holdings, data.holdings_history)
    cosine = trained.customer_embeddings(data.customers, data.holdings, data.holdings_history)
    cosine = cosine @ trained.product_embeddings_.T
    rec = Recommender(trained, data)
    objected = rec._known.attributes["objected"]
    np.testing.assert_allclose(
        want[~objected, j], (cosine[:, j] - 0.5 * cosine[:, ~launches].mean(axis=1))[~objected], atol=1e-5
    )
    np.testing.assert_allclose(rec.scores(rec._known)[~objected], want[~objected], atol=1e-5)
    save_model_dir(trained, tmp_path / "model")
    loaded = Recommender(load_model_dir(tmp_path / "model").trained, data)
    np.testing.assert_array_equal(loaded.scores(loaded._known), rec.scores(rec._known))
    # Batch scoring (chunks, the history read per chunk) ranks the launch as in memory.
    launched = write_dataset(dataset_tables(data), S.SYNTHETIC.schema(), tmp_path / "bank")
    score_dataset(rec, launched, tmp_path / "top.parquet", k=3, chunk_rows=128)
    top = pd.read_parquet(tmp_path / "top.parquet")
    shown = top[top[S.PRODUCT_ID] == launch]
    assert len(shown) > 0
    row = {str(c): i for i, c in enumerate(data.customers[S.CUSTOMER_ID])}
    np.testing.assert_allclose(shown["score"], [want[row[c], j] for c in shown[S.CUSTOMER_ID]], atol=1e-5)


def test_batch_scoring_in_chunks_ranks_as_in_memory(bank, blended, tmp_path):
    from finrec.recommend.batch import score_dataset

    folder, data = bank
    out = tmp_path / "top.parquet"
    score_dataset(Recommender(blended), folder, out, k=3, chunk_rows=64, workers=2)
    top = pd.read_parquet(out)
    full = Recommender(blended, data)
    ranking = full.rank(full._known, 3, None)
    ids = full.pipeline.product_ids_
    want = {
        (cid, r + 1): (ids[i], s)
        for cid, row, srow in zip(full._known.ids, ranking.index, ranking.scores)
        for r, (i, s) in enumerate(zip(row, srow))
        if i >= 0
    }
    assert len(top) == len(want) > 0
    for cid, rank, pid, score in top[["customer_id", "rank", "product_id", "score"]].itertuples(index=False):
        assert want[(cid, rank)][0] == pid and abs(want[(cid, rank)][1] - score) < 1e-5


def test_a_blend_file_that_is_not_the_models_is_refused(bank, blended, tmp_path):
    import hashlib

    from finrec.artifacts import BLEND_FILE, MANIFEST, load_model_dir, save_model_dir
    from finrec.errors import ArtifactError

    save_model_dir(blended, tmp_path / "model")
    file = tmp_path / "model" / BLEND_FILE
    for change, message in (
        (lambda raw: raw.update(weight=1.5), "out of range"),
        (lambda raw: raw.update(cold_weight=-0.1), r"cold_weight -0.1 out of range \[0, 1\)"),
        (lambda raw: raw.update(launches_from="trees"), "launches_from 'trees' is not one of towers, zero"),
        (lambda raw: raw.update(cold_weight="half"), "cannot load the model"),
        (
            lambda raw: raw["teacher"]["pipeline"].update(product_ids=raw["teacher"]["pipeline"]["product_ids"][::-1]),
            "catalogue",
        ),
        (lambda raw: raw.pop("teacher"), BLEND_FILE),
        (lambda raw: raw["teacher"].update(classes=raw["teacher"]["classes"] + [99]), "increasing positions"),
        (lambda raw: raw["teacher"].update(classes=raw["teacher"]["classes"][:-1]), "its trees score"),
        (lambda raw: raw["teacher"].update(use_holdings=False), "its trees read"),
    ):
        raw = json.loads(file.read_text())
        change(raw)
        file.write_text(json.dumps(raw))
        manifest = json.loads((tmp_path / "model" / MANIFEST).read_text())
        manifest["files"][BLEND_FILE] = hashlib.sha256(file.read_bytes()).hexdigest()
        (tmp_path / "model" / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match=message):
            load_model_dir(tmp_path / "model")
        save_model_dir(blended, tmp_path / "model")


def test_explanations_score_the_blend(bank, blended):
    # SHAP explains the score the customer is ranked by: with a blend, the trees' part included.
    from finrec.explain import CustomerExplainer

    _, data = bank
    rec = Recommender(blended, data)
    explainer = CustomerExplainer(rec)
    customers = explainer.background.head(20).reset_index(drop=True)
    X = explainer.encode(customers)
    product = rec.pipeline.product_ids_[3]
    got = explainer.score_function(product)(X)
    decoded = explainer.decode(X)
    nothing = np.zeros((len(X), rec.pipeline.n_products), dtype=bool)
    context = rec.context(decoded, held=nothing, validated=True)  # the model's columns alone, as explain passes them
    np.testing.assert_allclose(got, rec.scores(context)[:, 3], atol=1e-5)
    towers_only = rec.tower(context.inputs) @ blended.product_embeddings_[3]
    assert np.abs(got - towers_only).max() > 1e-3


def test_the_model_risk_report_states_the_blend_and_the_teacher(blended, trained):
    # A validator signs off the scoring function: the report's method section names the trees.
    import types

    from finrec.governance.report import scoring_notes

    # This bank has a history: the default trained on its earlier months too, and says so first.
    months, *notes = scoring_notes(blended)
    assert months.startswith("Training months: besides the latest month's adoptions, those of")
    assert len(notes) == 2 and notes[0].startswith("Tree blend: the score is 0.5 x the cosine + 0.5 x 0.1 x")
    assert "with the holdings history's lag features" in notes[0] and "protected columns included" in notes[0]
    # This small bank's training customers never adopted some products: the trees have no logit
    # for them, and the report names them.
    launches = [blended.pipeline.product_ids_[p] for p in np.flatnonzero(blended.blend.launches())]
    assert 0 < len(launches) <= 5
    assert notes[1].startswith(
        f"{len(launches)} product(s) the LightGBM model never saw adopted ({', '.join(launches)})"
    )
    # A cold weight of its own is stated; the same weight for every customer is not.
    cold = types.SimpleNamespace(**{**vars(blended), "blend": dataclasses.replace(blended.blend, cold_weight=0.2)})
    cold_notes = scoring_notes(cold)
    assert len(cold_notes) == 4 and cold_notes[3].startswith(
        "A customer who holds nothing (a new customer, or one who closed everything) is scored with the tree "
        "weight 0.2 instead of 0.5"
    )
    assert scoring_notes(trained) == []  # the session's model: no teacher, no blend
    distilled = scoring_notes(types.SimpleNamespace(config=Config(), blend=None))
    assert len(distilled) == 1 and "0.8 x the cross-entropy against a multiclass LightGBM teacher" in distilled[0]


def test_the_choice_reads_the_towers_not_a_blend_the_model_already_has(bank, blended, caplog):
    import dataclasses
    import logging

    from finrec.training import train

    _, data = bank
    val = data.subset_customers(_adopters(data)[200:500])
    towers_only = dataclasses.replace(blended, blend=None, history=dict(blended.history))
    found = []
    for model in (towers_only, blended):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="finrec.training.train"):
            train.choose_blend(model, blended.blend.teacher, val, weights=(0.0, 0.4))
        found.append([r.getMessage() for r in caplog.records if "tree blend: validation" in r.getMessage()])
    assert found[0] and found[0] == found[1]


def test_the_shipped_blend_refits_its_teacher_on_every_training_customer(bank, monkeypatch):
    from finrec.training import train
    from finrec.training.trees import TreeBlend

    _, data = bank
    seen, teachers = [], []
    real_teacher, real_calibrate = train.fit_teacher, train.calibrate

    def teacher_spy(dataset, *args, **kwargs):
        seen.append(set(dataset.customers[S.CUSTOMER_ID].astype(str)))
        teachers.append(real_teacher(dataset, *args, **kwargs))
        return teachers[-1]

    def calibrate_spy(trained, *args, **kwargs):
        # The calibration is fitted while the blend's teacher is still the one that never saw
        # the validation customers.
        assert len(seen) == 1
        return real_calibrate(trained, *args, **kwargs)

    monkeypatch.setattr(train, "fit_teacher", teacher_spy)
    monkeypatch.setattr(train, "calibrate", calibrate_spy)
    monkeypatch.setattr(train, "choose_blend", lambda trained, teacher, val, **_: TreeBlend(teacher, 0.5, 0.1))
    fitted = train.fit(data, small_config("always"), verbose=0)
    everyone = set(data.customers[S.CUSTOMER_ID].astype(str))
    assert len(seen) == 2 and seen[0] < everyone and seen[1] == everyone
    assert fitted.blend.weight == 0.5 and fitted.blend.teacher is teachers[1]
    from finrec.governance.report import scoring_notes

    assert fitted.history["tree_blend_refit"] == [1.0]
    assert any("refitted on every training customer" in note for note in scoring_notes(fitted))
    # Above REFIT_MAX_CUSTOMERS (a large bank, where the refit costs more than it gained), no
    # second teacher is fitted.
    seen.clear()
    monkeypatch.setattr(train, "REFIT_MAX_CUSTOMERS", len(everyone) - 1)
    large = train.fit(data, small_config("always"), verbose=0)
    assert large.blend.teacher is teachers[-1] and len(seen) == 1 and "tree_blend_refit" not in large.history
    assert not any("refitted" in note for note in scoring_notes(large))


def test_the_blend_weight_is_chosen_on_the_latest_and_the_earlier_months_together(bank, blended):
    # Each earlier month's customers are ranked with the features of then, by the towers and the
    # trees alike, and the chosen weight's figure is the nDCG over every month's rows at once.
    from finrec.evaluate.metrics import summarize
    from finrec.history_features import earlier_months
    from finrec.training import train

    _, data = bank
    val = data.subset_customers(_adopters(data)[:200])
    months = earlier_months(val, 4)  # (this bank's latest snapshot lacks most customers: no adds then)
    assert len(months) >= 2
    chosen = train.choose_blend(blended, blended.blend.teacher, val, weights=(0.5,), earlier=months)
    assert chosen is not None and chosen.weight == 0.5
    scores, relevant, excluded = [], [], []
    for part, reference in [(val, None), *months]:
        inputs = blended.pipeline.transform_customers(
            part.customers, part.holdings, history=part.holdings_history, history_reference=reference
        )
        cosine = train.customer_embeddings(blended.model, inputs) @ blended.product_embeddings_.T
        held = blended.pipeline.holdings_matrix(part.customers["customer_id"].to_numpy(), part.holdings)
        trees = blended.blend.teacher.logits(
            part.customers, held=held, history=part.holdings_history, reference=reference
        )
        scores.append(0.5 * cosine + 0.5 * _unit(blended.blend.teacher, cosine, trees, 0.1))
        rel, exc = train.ranking_targets(blended.pipeline, part)
        relevant.append(rel)
        excluded.append(exc)
    expected = summarize(np.concatenate(scores), np.concatenate(relevant), np.concatenate(excluded), k=5)["ndcg@5"]
    assert blended.history["blend_val_ndcg@5"] == [pytest.approx(expected, abs=1e-6)]
    alone = summarize(scores[0], relevant[0], excluded[0], k=5)["ndcg@5"]
    assert abs(alone - expected) > 1e-4  # the earlier months did count

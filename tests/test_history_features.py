"""History features: against a naive loop on a hand-made history, through the pipeline (save /
load, records), the towers (numpy twin == Keras for every encoder) and the no-history path."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pandas as pd
import pytest

from finrec.config import Config, ModelConfig, TrainConfig
from finrec.data import schema as S
from finrec.data.io import Dataset
from finrec.errors import DataError
from finrec.features import FeaturePipeline
from finrec.history_features import HORIZON, TIME_BUCKETS, HistoryFeatures, earlier_months, months
from finrec.model.history import ColdStartDropout
from finrec.model.towers import customer_tower
from finrec.recommend.index import NumpyTower
from finrec.training.train import TrainingExamples

PRODUCTS = ["A", "B", "C"]


def month_end(offset: int) -> pd.Timestamp:
    return pd.Timestamp("2023-01-31") + pd.offsets.MonthEnd(offset)


# customer -> product -> months (0..9) it was held at; month 9 is the latest snapshot
HAND = {
    "c1": {"A": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "B": [2, 3, 7, 8]},
    "c2": {"B": [5, 6, 7, 8, 9], "C": [0, 1]},
    "c3": {},
    "c4": {"A": [9], "C": [3, 4, 6]},
}
CURRENT = {"c1": ["A", "C"], "c2": [], "c3": ["B"], "c4": ["A", "C"]}


def hand_history() -> pd.DataFrame:
    rows = [(c, p, month_end(m)) for c, held in HAND.items() for p, ms in held.items() for m in ms]
    return pd.DataFrame(rows, columns=[S.CUSTOMER_ID, S.PRODUCT_ID, S.AS_OF])


def positions(ids) -> np.ndarray:
    return np.array([PRODUCTS.index(str(p)) if str(p) in PRODUCTS else -1 for p in ids])


def held_now(customers) -> np.ndarray:
    return np.array([[p in CURRENT[c] for p in PRODUCTS] for c in customers])


def naive(customer: str, product: str, lags: int) -> dict:
    """The features by a plain loop over months: ..., 8, 9 (history), 10 (now)."""
    now = 10
    seq = {m: m in HAND[customer].get(product, []) for m in range(now - HORIZON, now)}
    seq[now] = product in CURRENT[customer]
    months = sorted(seq)
    adds = [m for m in months if seq[m] and (m == months[0] or not seq[m - 1])]
    drops = [m for m in months[1:] if not seq[m] and seq[m - 1]]
    return {
        "lags": [seq[now - k] for k in range(1, lags + 1)],
        "since_add": now - adds[-1] if adds else -1,
        "since_drop": now - drops[-1] if drops else -1,
        "tenure": now - adds[-1] if seq[now] else -1,
        "adds": len(adds),
        "drops": len(drops),
    }


def bucket(months: int) -> list[float]:
    out = [0.0] * len(TIME_BUCKETS)
    if months >= 0:
        out[max(i for i, edge in enumerate(TIME_BUCKETS) if months >= edge)] = 1.0
    return out


def test_event_features_match_a_naive_loop():
    customers = list(HAND)
    h = HistoryFeatures(lags=4, encoder="events").fit(len(PRODUCTS))
    cube = h.ownership(customers, hand_history(), held_now(customers), positions)
    events = h.events_of(cube, 4)
    block = h.transform(customers, hand_history(), held_now(customers), positions)["history_events"]
    assert block.shape == (4, 3, h.n_event_features)
    for i, c in enumerate(customers):
        for j, p in enumerate(PRODUCTS):
            want = naive(c, p, 4)
            assert events["lags"][i, j].tolist() == want["lags"], (c, p)
            for key in ("since_add", "since_drop", "tenure", "adds", "drops"):
                assert events[key][i, j] == want[key], (c, p, key)
            row = (
                [float(v) for v in want["lags"]]
                + bucket(want["since_add"])
                + bucket(want["since_drop"])
                + [np.log1p(want["adds"]), np.log1p(want["drops"])]
                + bucket(want["tenure"])
            )
            np.testing.assert_allclose(block[i, j], row, rtol=1e-6, err_msg=f"{c} {p}")
    # spot checks of the hand-made story: c1 closed B at month 9 (1 month before now), c2's C
    # ended at month 2 (8 months back), c3 has no history and took up B now
    assert events["since_drop"][0, 1] == 1 and events["since_drop"][1, 2] == 8
    assert events["since_add"][2, 1] == 0 and events["adds"][2].tolist() == [0, 1, 0]
    lag = h.lag_table(cube)
    assert np.isnan(lag["since_drop"][2, 0]) and lag["lag_1"][0].tolist() == [1.0, 0.0, 0.0]


def test_sequence_is_the_last_snapshots_then_the_current_holdings():
    customers = list(HAND)
    h = HistoryFeatures(lags=3, encoder="gru").fit(len(PRODUCTS))
    seq = h.transform(customers, hand_history(), held_now(customers), positions)["history_sequence"]
    assert seq.shape == (4, 4, 3)
    # c4: months 7, 8, 9 then now; A held at 9 and now, C at none of 7-9 but now
    assert seq[3].tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 1]]


def test_no_history_is_an_all_zero_block_and_unknown_ids_are_ignored():
    h = HistoryFeatures(lags=2, encoder="events").fit(3)
    none = h.transform(["x"], None, np.zeros((1, 3), bool), positions)["history_events"]
    assert not none.any()
    junk = pd.DataFrame({S.CUSTOMER_ID: ["nobody", "x"], S.PRODUCT_ID: ["A", "ZZZ"], S.AS_OF: [month_end(0)] * 2})
    assert not h.transform(["x"], junk, np.zeros((1, 3), bool), positions)["history_events"].any()


# ------------------------------------------------------------------------------ the pipeline
@pytest.fixture(scope="module")
def bank_with_history(small_dataset):
    """The small bank with a made-up past: each current holding appears at a random run of the
    last months, and a few closed products earlier."""
    rng = np.random.default_rng(0)
    h = small_dataset.holdings
    rows = []
    for m in range(6):
        kept = h[rng.random(len(h)) < 0.4 + 0.1 * m].assign(**{S.AS_OF: month_end(m)})
        rows.append(kept)
    closed = small_dataset.interactions.sample(frac=0.3, random_state=1).assign(**{S.AS_OF: month_end(1)})
    history = pd.concat(rows + [closed[[S.CUSTOMER_ID, S.PRODUCT_ID, S.AS_OF]]], ignore_index=True)
    return dataclasses.replace(small_dataset, holdings_history=history)


@pytest.mark.parametrize("encoder", ["events", "flat", "gru"])
def test_numpy_tower_equals_keras_with_history(bank_with_history, encoder):
    data = bank_with_history
    pipeline = FeaturePipeline(data.schema, history_lags=3, history_encoder=encoder).fit(data)
    inputs = pipeline.transform_customers(data.customers.iloc[:300], data.holdings, history=data.holdings_history)
    assert pipeline.history_ is not None and any(k.startswith("history_") for k in inputs)
    keras.utils.set_random_seed(0)
    tower = customer_tower(
        pipeline.customer_input_spec(),
        ModelConfig(customer_widths=(16,)),
        cold_start_dropout=0.3,
        numeric_edges=pipeline.customer_bins_,
    )
    for layer in tower.layers:  # non-trivial BatchNorm statistics and biases
        for w in layer.weights:
            if "moving_variance" in w.path or "bias" in w.path or "gamma" in w.path:
                w.assign(np.random.default_rng(1).uniform(0.5, 1.5, w.shape).astype("float32"))
    want = keras.ops.convert_to_numpy(tower(inputs, training=False))
    got = NumpyTower.from_keras(tower)(inputs)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_cold_start_dropout_zeroes_the_same_rows_of_every_input_and_only_in_training():
    layer = ColdStartDropout(0.5, seed=3)
    a, b = np.ones((200, 4), "float32"), np.ones((200, 2, 3), "float32")
    out_a, out_b = (keras.ops.convert_to_numpy(x) for x in layer([a, b], training=True))
    zeroed = out_a.sum(axis=1) == 0
    assert 50 < zeroed.sum() < 150
    assert (out_b.reshape(200, -1).sum(axis=1) == 0).tolist() == zeroed.tolist()
    assert (out_a[~zeroed] == 1).all()
    assert all((keras.ops.convert_to_numpy(x) == 1).all() for x in layer([a, b], training=False))


def test_pipeline_saves_and_loads_history_and_records_match_frames(bank_with_history):
    data = bank_with_history
    pipeline = FeaturePipeline(data.schema, history_lags=4).fit(data)
    again = FeaturePipeline.from_dict(pipeline.to_dict())
    assert again.customer_input_spec() == pipeline.customer_input_spec()
    cid = data.customers[S.CUSTOMER_ID].iloc[5]
    one = data.customers.iloc[5:6]
    mine = data.holdings_history[data.holdings_history[S.CUSTOMER_ID] == cid]
    frame = again.transform_customers(one, data.holdings, history=mine)
    held = np.flatnonzero(pipeline.holdings_matrix([cid], data.holdings)[0])
    entries = [{S.PRODUCT_ID: p, S.AS_OF: str(d.date())} for p, d in zip(mine[S.PRODUCT_ID], mine[S.AS_OF])]
    record = again.transform_record(one.iloc[0].to_dict(), held, entries)
    for name in frame:
        np.testing.assert_allclose(record[name], frame[name], err_msg=name)
    # no history and nothing held: the all-zero block holdings dropout trains for
    assert not again.transform_record(one.iloc[0].to_dict(), [])["history_events"].any()


def test_without_history_the_pipeline_and_the_tower_are_todays(small_dataset):
    plain = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    off = FeaturePipeline(small_dataset.schema, history_encoder="none").fit(small_dataset)
    assert plain.history_ is None and plain.customer_input_spec() == off.customer_input_spec()
    raw = plain.to_dict()
    raw.pop("history")  # a pipeline saved before history existed loads unchanged
    assert FeaturePipeline.from_dict(raw).history_ is None
    inputs = plain.transform_customers(small_dataset.customers.iloc[:50], small_dataset.holdings)
    assert set(inputs) == {"customer_numeric", "holdings"} | {k for k in inputs if k.startswith("customer_cat_")}
    keras.utils.set_random_seed(0)
    tower = customer_tower(plain.customer_input_spec(), ModelConfig(), numeric_edges=plain.customer_bins_)
    assert not any("hist" in layer.name or "coldstart" in layer.name for layer in tower.layers)


def test_trained_model_with_history_saves_loads_and_serves_the_same(bank_with_history, tmp_path):
    from finrec.artifacts import load_model_dir, save_model_dir
    from finrec.model.two_tower import build_two_tower
    from finrec.recommend.recommender import Recommender
    from finrec.training.train import TrainedModel

    config = Config(
        model=ModelConfig(
            customer_widths=(16,), product_widths=(16,), embedding_dim=8, history_lags=3, product_id_dropout=0.2
        ),
        training=TrainConfig(holdings_dropout=0.2),
    ).validate()
    data = bank_with_history
    # Untrained weights serve as well as trained ones to test that everything travels.
    pipeline = FeaturePipeline(data.schema, history_lags=3).fit(data)
    keras.utils.set_random_seed(0)
    model = build_two_tower(pipeline, pipeline.transform_products(data.products), config.model, 0.2)
    trained = TrainedModel(model, pipeline, config, data.products)
    loaded = load_model_dir(save_model_dir(trained, tmp_path / "m")).trained
    want = trained.score(data.customers, data.holdings, data.holdings_history)
    np.testing.assert_allclose(loaded.score(data.customers, data.holdings, data.holdings_history), want, atol=1e-5)
    rec = Recommender(loaded, data)
    cid = data.customers[S.CUSTOMER_ID].iloc[0]
    np.testing.assert_allclose(rec.scores(rec._single(cid))[0], want[0], atol=1e-5)
    features = {k: v for k, v in data.customers.iloc[0].to_dict().items() if k != S.CUSTOMER_ID}
    past = [{"product_id": pipeline.product_ids_[0], "as_of": "2023-05-31"}]
    without = rec.scores(rec._single(features))
    assert not np.allclose(rec.scores(rec._single({**features, "history": past})), without)
    assert len(rec.recommend({**features, "history": past}, k=3).items) == 3
    with pytest.raises(DataError, match="features.history"):
        rec._single({**features, "history": [{"product_id": "nope", "as_of": "2023-05-31"}]})
    # finrec score reads the history in chunks and ranks as the in-memory path does
    from finrec.data.io import dataset_tables, write_dataset
    from finrec.recommend.batch import score_dataset

    some = data.subset_customers(data.customers[S.CUSTOMER_ID].iloc[:300])
    folder = write_dataset(dataset_tables(some), some.schema, tmp_path / "d")
    score_dataset(rec, folder, tmp_path / "top.csv", k=1, chunk_rows=128, workers=1)
    top = pd.read_csv(tmp_path / "top.csv", dtype=str)
    full = Recommender(loaded, some)
    best = full.rank(full._known, 1, None).index[:, 0]
    want_top = dict(zip(some.customers[S.CUSTOMER_ID], np.asarray(pipeline.product_ids_)[best]))
    assert top[S.PRODUCT_ID].tolist() == [want_top[c] for c in top[S.CUSTOMER_ID]]


def test_id_dropout_zeroes_unknown_products_and_a_share_in_training():
    from finrec.model.history import IdDropout

    emb = np.ones((400, 3), "float32")
    known = np.ones(400, "float32")
    known[:2] = 0.0
    layer = IdDropout(0.25, seed=1)
    served = keras.ops.convert_to_numpy(layer([emb, known], training=False))
    assert (served[:2] == 0).all() and (served[2:] == 1).all()
    trained = keras.ops.convert_to_numpy(layer([emb, known], training=True))
    assert (trained[:2] == 0).all() and 50 < (trained[2:, 0] == 0).sum() < 150


def test_lightgbm_lag_features_are_the_lag_table(bank_with_history):
    pytest.importorskip("lightgbm")
    from finrec.evaluate.baselines import LightGBMBaseline

    data = bank_with_history.subset_customers(bank_with_history.customers[S.CUSTOMER_ID].iloc[:500])
    model = LightGBMBaseline(max_rounds=2, num_threads=1, history_lags=2).fit(data)
    x = model.features(data.customers.iloc[:40], data.holdings, data.holdings_history)
    assert {"lag_1_0", "lag_2_0", "since_add_0", "since_drop_0", "adds_0", "drops_0"} <= set(x.columns)
    cube = model.lags_.ownership(
        data.customers[S.CUSTOMER_ID].iloc[:40].to_numpy(),
        data.holdings_history,
        model.pipeline_.holdings_matrix(data.customers[S.CUSTOMER_ID].iloc[:40].to_numpy(), data.holdings),
        model.pipeline_.product_positions,
    )
    np.testing.assert_array_equal(x["since_drop_3"].to_numpy(), model.lags_.lag_table(cube)["since_drop"][:, 3])
    assert model.score(data.customers.iloc[:40], data.holdings, data.holdings_history).shape == (40, 25)
    plain = LightGBMBaseline(max_rounds=1, num_threads=1).fit(data)
    assert not any(c.startswith("lag_") for c in plain.features(data.customers.iloc[:5], data.holdings).columns)


def test_the_teacher_sees_the_history_as_lags_when_the_model_does(bank_with_history, fast_config, monkeypatch):
    # The Santander winners' lag set is tree ground: the teacher gets it, the towers learn from
    # the teacher; a model told to ignore the history (encoder none) gets a teacher without it.
    from finrec.training import train as T
    from finrec.training.trees import fit_teacher

    seen = []

    def spy(dataset, seed=0, history_lags=0, **options):
        teacher = fit_teacher(dataset, seed, history_lags=history_lags, **options)
        seen.append((history_lags, teacher.lags_ is not None))
        return teacher

    monkeypatch.setattr(T, "fit_teacher", spy)
    by_encoder = {}
    for encoder in ("events", "none"):
        seen.clear()
        config = dataclasses.replace(
            fast_config.with_overrides(epochs=1, distill=0.5),
            model=dataclasses.replace(fast_config.model, history_encoder=encoder, history_lags=3),
        ).validate()
        trained = T.fit(bank_with_history, config, verbose=0)
        by_encoder[encoder] = list(seen)
        # A chosen blend refits its teacher on every training customer: the same lags again.
        assert len(seen) == (2 if trained.history.get("tree_blend_refit") else 1)
    assert set(by_encoder["events"]) == {(3, True)} and set(by_encoder["none"]) == {(0, False)}


# ------------------------------------------------------------------------ earlier months
def hand_dataset() -> Dataset:
    schema = S.SYNTHETIC.schema()
    current = pd.DataFrame([(c, p) for c, held in CURRENT.items() for p in held], columns=[S.CUSTOMER_ID, S.PRODUCT_ID])
    return Dataset(
        schema=schema,
        customers=pd.DataFrame({schema.customers.id: list(HAND)}),
        products=pd.DataFrame({schema.products.id: PRODUCTS}),
        interactions=pd.DataFrame({S.CUSTOMER_ID: ["c2"], S.PRODUCT_ID: ["A"], S.TIMESTAMP: [month_end(10)]}),
        holdings=current,
        holdings_history=hand_history(),
    )


def naive_earlier_months(count: int) -> list[dict]:
    """Month by month, back from the latest snapshot (9): the adds by the next snapshot (10:
    the current holdings) of each customer who held something then."""
    held = {m: {c: {p for p, ms in HAND[c].items() if m in ms} for c in HAND} for m in range(10)}
    held[10] = {c: set(CURRENT[c]) for c in HAND}
    out = []
    for m in range(9, 9 - count, -1):
        adds = {(c, p) for c in HAND if held[m][c] for p in held[m + 1][c] - held[m][c]}
        if adds:
            out.append({"month": m, "adds": adds, "held": {(c, p) for c, _ in adds for p in held[m][c]}})
    return out


@pytest.mark.parametrize("count", [1, 3, 4, 10, 20])
def test_earlier_months_are_each_snapshots_adds_with_the_holdings_and_history_of_then(count):
    found = earlier_months(hand_dataset(), count)
    expected = naive_earlier_months(min(count, 10))
    assert [len(part.interactions) for part, _ in found] == [len(e["adds"]) for e in expected]
    for (part, reference), e in zip(found, expected, strict=True):
        pairs = lambda links: set(zip(links[S.CUSTOMER_ID], links[S.PRODUCT_ID], strict=True))  # noqa: E731
        assert pairs(part.interactions) == e["adds"]
        assert pairs(part.holdings) == e["held"]
        assert set(part.customers["customer_id"]) == {c for c, _ in e["adds"]}
        # Only what was known then: snapshots before the month, the reference the one before.
        snapshot = months(part.holdings_history[S.AS_OF]) if len(part.holdings_history) else np.array([])
        assert (snapshot < months([month_end(e["month"])])[0]).all()
        assert reference == (months([month_end(e["month"] - 1)])[0] if e["month"] > 0 else None)
        assert (part.interactions[S.TIMESTAMP] > month_end(e["month"])).all()
        assert part.ground_truth is None


def test_earlier_months_need_a_history_and_a_positive_count(small_dataset):
    assert earlier_months(small_dataset, 3) == []
    assert earlier_months(hand_dataset(), 0) == []


def test_earlier_months_train_with_the_features_of_then_and_never_the_validation_customers(
    bank_with_history, fast_config, monkeypatch
):
    from finrec.governance.report import scoring_notes
    from finrec.training import train as T

    parts, validated, ranked = [], [], []
    real_build, real_setup = T.build_examples, T.validation_setup

    def build_spy(pipeline, dataset, history_reference=None):
        examples = real_build(pipeline, dataset, history_reference=history_reference)
        if not validated:  # the validation set's own examples come later
            parts.append((dataset, history_reference, examples))
        return examples

    def setup_spy(pipeline, val_data, *args, **kwargs):
        validated.append(set(val_data.customers["customer_id"]))
        callbacks, data = real_setup(pipeline, val_data, *args, **kwargs)
        ranking = next(c for c in callbacks if isinstance(c, T.RankingValidation))
        earlier = args[4] if len(args) > 4 else kwargs.get("earlier", ())
        ranked.append((len(val_data.customers), len(ranking.relevant), earlier))
        return callbacks, data

    monkeypatch.setattr(T, "build_examples", build_spy)
    monkeypatch.setattr(T, "validation_setup", setup_spy)
    config = fast_config.with_overrides(epochs=1, history_months=3, distill=0.5)
    trained = T.fit(bank_with_history, config, verbose=0)

    (target, _, first), *earlier = parts
    assert len(earlier) == 3 and trained.history["earlier_months"] == [3.0]
    # The model-risk report says what trained it.
    assert any("those of 3 earlier month(s)" in note for note in scoring_notes(trained))
    assert trained.history["train_examples"] == [float(sum(len(e) for _, _, e in parts))]
    for dataset, reference, examples in earlier:
        # The training customers' past months, never a validation customer's.
        assert set(dataset.customers["customer_id"]) <= set(target.customers["customer_id"])
        assert not set(dataset.customers["customer_id"]) & validated[0]
        # Each row's history input is the one its month's own dataset gives.
        again = trained.pipeline.transform_customers(
            dataset.customers, dataset.holdings, history=dataset.holdings_history, history_reference=reference
        )
        assert np.array_equal(again["history_events"], examples.inputs["history_events"])
        assert examples.soft_targets is not None and examples.soft_targets.shape == (
            len(dataset.customers),
            trained.pipeline.n_products,
        )
    # Early stopping ranks the validation customers' latest month and their own earlier months.
    latest, rows, val_earlier = ranked[0]
    assert len(val_earlier) == 3 and rows == latest + sum(len(p.customers) for p, _ in val_earlier)
    assert all(set(p.customers["customer_id"]) <= validated[0] for p, _ in val_earlier)
    # Without it, the same fit trains on the target month alone.
    parts.clear()
    validated.clear()
    T.fit(bank_with_history, fast_config.with_overrides(epochs=1, distill=0.5, history_months=0), verbose=0)
    assert len(parts) == 1 and len(parts[0][2]) == len(first)
    assert ranked[-1][1] == ranked[-1][0]


def test_examples_join_keeps_each_rows_customer_and_targets():
    def examples(n, offset, soft=True):
        return TrainingExamples(
            {"x": np.arange(n, dtype="float32")[:, None] + offset},
            np.arange(n) % max(n - 1, 1),
            np.arange(n) + offset,
            np.eye(n, 3, dtype=bool),
            np.full((n, 3), offset, dtype="float32") if soft else None,
        )

    a, b, c = examples(3, 0), examples(2, 10), examples(4, 20)
    joined = TrainingExamples.join([a, b, c])
    assert len(joined) == 9 and TrainingExamples.join([a]).customer_rows.tolist() == a.customer_rows.tolist()
    # Every example still points at its own customer's input row and mask.
    for i in range(9):
        source, j = (a, i) if i < 3 else (b, i - 3) if i < 5 else (c, i - 5)
        assert joined.inputs["x"][joined.customer_rows[i]] == source.inputs["x"][source.customer_rows[j]]
        assert np.array_equal(
            joined.never_negative[joined.customer_rows[i]], source.never_negative[source.customer_rows[j]]
        )
        assert np.array_equal(
            joined.soft_targets[joined.customer_rows[i]], source.soft_targets[source.customer_rows[j]]
        )
        assert joined.positives[i] == source.positives[j]
    with pytest.raises(ValueError, match="teacher"):
        TrainingExamples.join([a, examples(2, 10, soft=False)])


def test_the_teacher_trains_on_earlier_months_but_stops_on_the_latest(bank_with_history, monkeypatch):
    import lightgbm as lgb

    from finrec.data.split import split_customer_ids
    from finrec.training.trees import TEACHER, LightGBMBaseline

    seen = {}
    real_train = lgb.train

    def spy(params, train_set, *args, valid_sets=(), **kwargs):
        seen["train"], seen["val"] = train_set, valid_sets[0]
        return real_train(params, train_set, *args, valid_sets=valid_sets, **kwargs)

    monkeypatch.setattr(lgb, "train", spy)
    parts = earlier_months(bank_with_history, 2)
    teacher = LightGBMBaseline(**TEACHER, history_lags=3).fit(bank_with_history, seed=0, earlier=parts)

    # The stop set is the latest month of 10% of its adopters, drawn as without earlier months.
    adopters = np.unique(bank_with_history.interactions[S.CUSTOMER_ID].astype(str))
    _, stop = split_customer_ids(adopters, 0.1, np.random.default_rng(0))
    stop = set(stop)
    latest = bank_with_history.interactions[S.CUSTOMER_ID].astype(str)
    assert seen["val"].num_data() == latest.isin(stop).sum()
    # Training rows: the latest month's other adoptions, then each earlier month's, theirs too
    # only for customers outside the stop set, with the features of then.
    expected = [
        teacher.features(bank_with_history.customers, bank_with_history.holdings, bank_with_history.holdings_history)
    ]
    rows = [bank_with_history.customers["customer_id"].astype(str).tolist().index(c) for c in latest if c not in stop]
    expected[0] = expected[0].iloc[rows]
    for part, reference in parts:
        ids = part.customers["customer_id"].astype(str).tolist()
        taken = [ids.index(c) for c in part.interactions[S.CUSTOMER_ID].astype(str) if c not in stop]
        frame = teacher.features(part.customers, part.holdings, part.holdings_history, reference=reference)
        expected.append(frame.iloc[taken])
    expected = pd.concat(expected, ignore_index=True)
    assert len(parts) == 2 and len(expected) > len(rows)
    pd.testing.assert_frame_equal(seen["train"].data, expected)
    with pytest.raises(ValueError, match="multiclass"):
        LightGBMBaseline(objective="binary").fit(bank_with_history, earlier=parts)


def test_tuned_lightgbm_trains_each_fit_on_the_earlier_months_of_its_own_customers(bank_with_history, monkeypatch):
    from finrec.evaluate.baselines import TunedLightGBM
    from finrec.training.trees import LightGBMBaseline

    fits = []
    real_fit = LightGBMBaseline.fit

    def spy(self, dataset, seed=0, earlier=()):
        fits.append((set(dataset.customers["customer_id"]), [set(p.customers["customer_id"]) for p, _ in earlier]))
        return real_fit(self, dataset, seed=seed, earlier=earlier)

    monkeypatch.setattr(LightGBMBaseline, "fit", spy)
    grid = {
        "num_leaves": (7,),
        "min_data_in_leaf": (20, 50),
        "learning_rate": (0.1,),
        "feature_fraction": (1.0,),
        "lambda_l2": (0.0,),
    }
    TunedLightGBM(max_trials=2, num_threads=1, grid=grid, max_rounds=30, history_lags=3, history_months=2).fit(
        bank_with_history, seed=0
    )
    (trial, trial_earlier), _, (final, final_earlier) = fits
    assert len(trial_earlier) == len(final_earlier) == 2
    # A trial's earlier months are its fitting customers' (never the validation ones); the refit's
    # are every customer's.
    assert all(ids <= trial for ids in trial_earlier) and final == set(bank_with_history.customers["customer_id"])
    assert sum(map(len, final_earlier)) > sum(map(len, trial_earlier))


def test_adoption_probabilities_read_the_history_in_chunks_as_in_memory(bank_with_history, fast_config, tmp_path):
    # Customers who adopted nothing give the calibration an adoption model, with the lag features
    # where the model reads the history: `finrec score --probabilities` builds them chunk by chunk
    # against the table's latest snapshot, and must give each customer its in-memory probability.
    from finrec.data.io import dataset_tables, write_dataset
    from finrec.recommend.batch import score_dataset
    from finrec.recommend.recommender import Recommender
    from finrec.training import train as T

    config = fast_config.with_overrides(epochs=1)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, history_lags=3)).validate()
    # Whether a customer adopts at all follows its past: those with a long history mostly do not.
    data = bank_with_history
    rows = data.holdings_history.groupby(S.CUSTOMER_ID).size()
    long_past = rows.index[rows > rows.median()].astype(str)
    ids = data.interactions[S.CUSTOMER_ID].astype(str)
    chance = np.where(ids.isin(long_past), 0.15, 0.95)
    keep = np.random.default_rng(0).random(len(ids)) < chance
    data = dataclasses.replace(data, interactions=data.interactions[keep].reset_index(drop=True))
    trained = T.fit(data, config, verbose=0)
    calibration = trained.calibration
    assert calibration.needs_adoption and calibration.adoption_model.lags_ is not None
    some = data.subset_customers(data.customers[S.CUSTOMER_ID].iloc[:300])
    folder = write_dataset(dataset_tables(some), some.schema, tmp_path / "d")
    score_dataset(
        Recommender(trained), folder, tmp_path / "top.csv", k=2, chunk_rows=128, workers=1, probabilities=True
    )
    got = pd.read_csv(tmp_path / "top.csv", dtype={S.CUSTOMER_ID: str})
    full = Recommender(trained)
    context = full.context(some.customers, some.holdings, history=some.holdings_history)
    probabilities = full.probabilities(context)
    rows = pd.Index(context.ids.astype(str)).get_indexer(got[S.CUSTOMER_ID])
    columns = full.pipeline.product_positions(got[S.PRODUCT_ID].to_numpy())
    np.testing.assert_allclose(got[S.PROBABILITY].to_numpy(), probabilities[rows, columns], rtol=1e-5, atol=1e-7)
    # The history moves the adoption model: without it the customers' chances differ. (Those who
    # objected to profiling are 0 either way: the trees never see them.)
    served = ~context.attributes["objected"]
    assert served.sum() > 200 and (context.adoption[~served] == 0).all()
    alone = calibration.adoption_probability(some.customers, context.held)
    assert np.abs(alone[served] - context.adoption[served]).max() > 0.01

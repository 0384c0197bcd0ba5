"""The gradient-boosted teacher (finrec.training.trees): its targets and what distillation gives."""

import numpy as np
import pytest

from finrec.config import Config
from finrec.errors import ConfigError
from finrec.features import FeaturePipeline
from finrec.training.trees import TEACHER, fit_teacher, teacher_targets


@pytest.fixture(scope="module")
def teacher_and_pipeline(small_dataset):
    return fit_teacher(small_dataset, seed=0), FeaturePipeline(small_dataset.schema).fit(small_dataset)


def test_teacher_targets_are_a_distribution_over_products_not_held(small_dataset, teacher_and_pipeline):
    teacher, pipeline = teacher_and_pipeline
    q = teacher_targets(teacher, small_dataset, pipeline)
    ids = small_dataset.customers[small_dataset.schema.customers.id].to_numpy()
    held = pipeline.holdings_matrix(ids, small_dataset.holdings)
    assert q.shape == (len(ids), pipeline.n_products) and q.dtype == np.float32
    assert (q[held] == 0).all() and (q >= 0).all()
    live = ~held.all(axis=1)
    np.testing.assert_allclose(q[live].sum(axis=1), 1.0, rtol=1e-5)
    # The same customer's row equals the teacher's own probabilities renormalized by hand.
    raw = teacher.score(small_dataset.customers.iloc[:3], small_dataset.holdings)
    raw[held[:3]] = 0
    np.testing.assert_allclose(q[:3], raw / raw.sum(axis=1, keepdims=True), rtol=1e-5)


def test_teacher_probabilities_are_lightgbms_own(small_dataset, teacher_and_pipeline):
    # score() walks the forest and takes the softmax of its raw scores: LightGBM's multiclass
    # probabilities, to round-off.
    teacher, _ = teacher_and_pipeline
    x = teacher.matrix(small_dataset.customers, small_dataset.holdings)
    want = teacher.booster_.predict(x, num_iteration=teacher.best_iteration_)
    got = teacher.score(small_dataset.customers, small_dataset.holdings)
    assert len(teacher.classes_) > 3 and got.shape == (len(x), teacher.pipeline_.n_products)
    np.testing.assert_allclose(got[:, teacher.classes_], want, rtol=1e-9, atol=1e-12)


def test_trees_the_walk_refuses_are_scored_by_lightgbms_own_prediction(
    small_dataset, teacher_and_pipeline, monkeypatch
):
    import copy

    from finrec.training import forest as forest_module

    teacher = copy.deepcopy(teacher_and_pipeline[0])
    teacher.__dict__.pop("forest_", None)
    walked = teacher.score(small_dataset.customers, small_dataset.holdings)
    teacher.__dict__.pop("forest_", None)
    monkeypatch.setattr(forest_module, "_MAX_LEAVES", 2)  # as a tree of more than 64 leaves would be
    got = teacher.score(small_dataset.customers, small_dataset.holdings)
    assert teacher._unwalkable and "forest_" not in teacher.__dict__
    x = teacher.matrix(small_dataset.customers, small_dataset.holdings)
    want = teacher.booster_.predict(x, num_iteration=teacher.best_iteration_)
    np.testing.assert_array_equal(got[:, teacher.classes_], want)
    np.testing.assert_allclose(got, walked, rtol=1e-9, atol=1e-12)


def test_teacher_targets_follow_our_catalogue_order_not_the_teachers(small_dataset, teacher_and_pipeline):
    teacher, pipeline = teacher_and_pipeline
    q = teacher_targets(teacher, small_dataset, pipeline)
    reordered = small_dataset.products.iloc[::-1].reset_index(drop=True)
    other = FeaturePipeline(small_dataset.schema).fit(
        type(small_dataset)(**{**vars(small_dataset), "products": reordered})
    )
    q_other = teacher_targets(teacher, small_dataset, other)
    order = [pipeline.product_ids_.index(p) for p in other.product_ids_]
    np.testing.assert_allclose(q_other, q[:, order], rtol=1e-6)


def test_teacher_ranks_adopted_products_above_the_rest(small_dataset, teacher_and_pipeline):
    # A teacher worth learning from: its mass on the adopted products beats popularity's.
    teacher, pipeline = teacher_and_pipeline
    q = teacher_targets(teacher, small_dataset, pipeline)
    ids = small_dataset.customers[small_dataset.schema.customers.id].to_numpy()
    adopted = pipeline.holdings_matrix(ids, small_dataset.interactions)
    popularity = np.asarray(pipeline.product_popularity_, "float64")
    held = pipeline.holdings_matrix(ids, small_dataset.holdings)
    pop = np.where(held, 0.0, popularity)
    pop = pop / np.maximum(pop.sum(axis=1, keepdims=True), 1e-12)
    rows = adopted.any(axis=1)
    assert (q * adopted)[rows].sum(axis=1).mean() > (pop * adopted)[rows].sum(axis=1).mean()
    assert teacher.num_leaves == TEACHER["num_leaves"] and teacher.best_iteration_ >= 1


def test_config_checks_distill_and_the_step_floor():
    Config.from_dict({"training": {"distill": 0.8, "min_steps_per_epoch": 50}})
    for bad, word in (
        ({"distill": 1.0}, "distill"),
        ({"distill": -0.1}, "distill"),
        ({"min_steps_per_epoch": -1}, "min_steps_per_epoch"),
        ({"min_steps_per_epoch": 2.5}, "min_steps_per_epoch"),
    ):
        with pytest.raises(ConfigError, match=word):
            Config.from_dict({"training": bad})


def test_lightgbm_threads_sleep_when_idle_unless_the_user_chose(monkeypatch, small_dataset):
    import os

    from finrec.training import trees

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    trees._passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    trees.LightGBMBaseline(max_rounds=2).fit(small_dataset)  # fit sets it before importing lightgbm
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_numeric_splits_find_the_age_limit_a_rule_sets(small_dataset):
    # Customers over 45 adopt one product, the rest another: the tree's most useful age split
    # is the limit itself (ages are whole years, so between 45 and 46).
    data = _age_driven(small_dataset)
    teacher = fit_teacher(data, seed=0)
    splits = teacher.numeric_splits(3)
    assert any(45 <= t <= 46 for t in splits["age"])
    best = teacher.numeric_splits(1)
    assert set(best) <= set(small_dataset.schema.customers.numeric_features)
    assert all(len(v) == 1 for v in best.values()) and 45 <= best["age"][0] <= 46
    assert all(np.isfinite(v).all() and np.all(np.diff(v) > 0) for v in splits.values())


def _age_driven(dataset):
    """``dataset`` with adoptions decided by age alone: over 45 one product, the rest another."""
    from finrec.data import schema as S

    customers = dataset.customers
    old = customers["age"].to_numpy() > 45
    products = dataset.products[S.PRODUCT_ID].to_numpy()
    interactions = dataset.interactions.iloc[: len(customers)].copy()
    interactions[S.CUSTOMER_ID] = customers[S.CUSTOMER_ID].to_numpy()
    interactions[S.PRODUCT_ID] = np.where(old, products[0], products[1])
    return type(dataset)(**{**vars(dataset), "interactions": interactions.reset_index(drop=True)})


def test_a_teacher_excluding_protected_columns_cannot_see_them(small_dataset):
    # A model trained with exclude_protected must not learn a protected column through its
    # teacher's targets: the teacher's scores do not move when the protected values do.
    data = _age_driven(small_dataset)
    protected = list(data.schema.customers.protected)
    assert "age" in protected
    changed = data.customers.copy()
    changed["age"] = np.where(changed["age"] > 45, 30, 60)
    blind = fit_teacher(data, seed=0, exclude_protected=True)
    np.testing.assert_array_equal(blind.score(data.customers, data.holdings), blind.score(changed, data.holdings))
    assert not set(protected) & {c[len("num_") :] for c in blind.features(data.customers.iloc[:2], data.holdings)}
    seeing = fit_teacher(data, seed=0)  # the same teacher with the column: its scores follow age
    assert np.abs(seeing.score(data.customers, data.holdings) - seeing.score(changed, data.holdings)).max() > 0.1


def test_a_teacher_without_holdings_does_not_read_them(small_dataset):
    blind = fit_teacher(small_dataset, seed=0, use_holdings=False)
    assert not [c for c in blind.features(small_dataset.customers.iloc[:2], small_dataset.holdings) if "held" in c]
    none = small_dataset.holdings.iloc[:0]
    np.testing.assert_array_equal(
        blind.score(small_dataset.customers, small_dataset.holdings), blind.score(small_dataset.customers, none)
    )


def test_teacher_logits_are_its_log_probabilities_less_the_row_mean(small_dataset, teacher_and_pipeline):
    teacher, _ = teacher_and_pipeline
    customers = small_dataset.customers.iloc[:50]
    logits = teacher.logits(customers, small_dataset.holdings)
    proba = teacher.score(customers, small_dataset.holdings)
    known = teacher.classes_
    assert logits.shape == proba.shape and logits.dtype == np.float32
    np.testing.assert_allclose(logits[:, known].mean(axis=1), 0.0, atol=1e-5)
    others = np.setdiff1d(np.arange(logits.shape[1]), known)
    assert (logits[:, others] == 0).all()
    softmax = np.exp(logits[:, known]) / np.exp(logits[:, known]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, proba[:, known], rtol=1e-4, atol=1e-6)
    # Given as the held matrix instead of the link table: the same.
    held = teacher.pipeline_.holdings_matrix(customers["customer_id"].to_numpy(), small_dataset.holdings)
    np.testing.assert_array_equal(teacher.logits(customers, held=held), logits)


def test_teacher_logits_are_the_float64_differences_rounded_once(small_dataset, teacher_and_pipeline):
    # Two write paths (every product a class, written in place; some never adopted, scattered):
    # both the float64 difference rounded to float32 once, the blend's scores to the bit.
    import copy

    teacher, _ = teacher_and_pipeline
    customers = small_dataset.customers.iloc[:300]
    x = teacher.matrix(customers.reset_index(drop=True), small_dataset.holdings)
    raw = teacher.forest().raw_score(x)
    expected = (raw - raw.mean(axis=1, keepdims=True)).astype(np.float32)
    n_products = teacher.pipeline_.n_products
    assert len(teacher.classes_) == n_products
    np.testing.assert_array_equal(teacher.logits(customers, small_dataset.holdings), expected)
    wider = copy.copy(teacher)  # the same trees read as a catalogue with one product more, never adopted
    wider.pipeline_ = copy.copy(teacher.pipeline_)
    wider.pipeline_.product_ids_ = [*teacher.pipeline_.product_ids_, "launched_later"]
    assert wider.pipeline_.n_products == n_products + 1
    logits = wider._logits_of(x)
    np.testing.assert_array_equal(logits[:, :n_products], expected)
    assert (logits[:, n_products] == 0).all()


def test_a_teacher_survives_its_json_form(small_dataset, teacher_and_pipeline):
    import json

    from finrec.training.trees import LightGBMBaseline

    teacher, _ = teacher_and_pipeline
    again = LightGBMBaseline.from_dict(json.loads(json.dumps(teacher.to_dict())))
    customers = small_dataset.customers.iloc[:200]
    np.testing.assert_array_equal(
        again.logits(customers, small_dataset.holdings), teacher.logits(customers, small_dataset.holdings)
    )


def test_a_tree_blend_is_a_dot_product_of_longer_vectors(teacher_and_pipeline):
    from finrec.training.trees import TreeBlend

    teacher, _ = teacher_and_pipeline
    rng = np.random.default_rng(0)
    embeddings, products = rng.normal(size=(7, 4)).astype("float32"), rng.normal(size=(5, 4)).astype("float32")
    part = rng.normal(size=(7, 5)).astype("float32")
    held = rng.random((7, 5)) < 0.3
    held[[1, 4]] = False  # two customers who hold nothing: the cold weight's
    for blend, towers in (
        (TreeBlend(teacher, 0.3, 0.1), np.full(7, 0.7)),
        (TreeBlend(teacher, 0.3, 0.1, cold_weight=0.0), np.where(held.any(axis=1), 0.7, 1.0)),
    ):
        got = blend.customer_vectors(embeddings, part, held, products) @ blend.product_vectors(products).T
        np.testing.assert_allclose(got, towers[:, None] * embeddings @ products.T + part, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(blend.cosine_part(embeddings @ products.T, held), got - part, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def launch_teacher(small_dataset):
    """A teacher that never saw product 3 adopted or held (a launch), and the product's position."""
    import dataclasses

    pipeline = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    launch = pipeline.product_ids_[3]
    drop = {
        name: getattr(small_dataset, name)[getattr(small_dataset, name)["product_id"].astype(str) != launch]
        for name in ("interactions", "holdings")
    }
    teacher = fit_teacher(dataclasses.replace(small_dataset, **drop), seed=0)
    assert list(teacher.pipeline_.product_ids_) == list(pipeline.product_ids_)
    return teacher, 3


def test_a_launch_meets_the_known_products_on_the_towers_scale(launch_teacher):
    # Found with benchmarks/cold_products.py (2026-11-30): the blend gave a product the teacher
    # never saw a tree logit of 0 (the customer's mean), which put every launch mid-catalogue.
    # Its part is now the towers' logit centred as the trees' are: weight * (cos_l - mean cos).
    from finrec.training.trees import TreeBlend

    teacher, launch = launch_teacher
    n_products = teacher.pipeline_.n_products
    blend = TreeBlend(teacher, 0.6, 0.1, cold_weight=0.2)
    assert np.flatnonzero(blend.launches()).tolist() == [launch]
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(6, 4)).astype("float32")
    products = rng.normal(size=(n_products, 4)).astype("float32")
    part = rng.normal(size=(6, n_products)).astype("float32")
    held = np.zeros((6, n_products), dtype=bool)
    held[:4, 0] = True  # customers 4 and 5 hold nothing: the cold weight
    filled = blend.with_launches(part, embeddings, products, held)
    cosine = embeddings @ products.T
    known = np.arange(n_products) != launch
    weight = np.array([0.6] * 4 + [0.2] * 2)
    np.testing.assert_allclose(
        filled[:, launch], weight * (cosine[:, launch] - cosine[:, known].mean(axis=1)), atol=1e-5
    )
    np.testing.assert_array_equal(filled[:, known], part[:, known])
    # Through the dot product, the launch scores cos_l - weight * (mean cos of the known products).
    got = blend.customer_vectors(embeddings, part, held, products) @ blend.product_vectors(products).T
    np.testing.assert_allclose(got[:, launch], cosine[:, launch] - weight * cosine[:, known].mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(got[:, known], ((1 - weight)[:, None] * cosine + part)[:, known], atol=1e-5)


def test_a_blend_saved_before_the_launch_rule_scores_as_it_did(launch_teacher):
    # Its weights and calibration were chosen with 0 in a launch's slot: loaded, it keeps that.
    from finrec.training.trees import TreeBlend

    teacher, launch = launch_teacher
    blend = TreeBlend(teacher, 0.6, 0.1)
    raw = blend.to_dict()
    assert raw["launches_from"] == "towers" and TreeBlend.from_dict(raw).launches()[launch]
    del raw["launches_from"]
    old = TreeBlend.from_dict(raw)
    assert old.launches_from == "zero" and not old.launches().any()
    part = np.ones((3, teacher.pipeline_.n_products), dtype="float32")
    embeddings = np.ones((3, 4), dtype="float32")
    products = np.arange(4 * teacher.pipeline_.n_products, dtype="float32").reshape(-1, 4)
    assert old.with_launches(part, embeddings, products, part > 0) is part
    # The customers who objected to profiling keep their 0 in every slot, launches included.
    skipped = blend.with_launches(0 * part, embeddings, products, part > 0, skip=np.array([False, True, False]))
    assert (skipped[1] == 0).all() and (skipped[[0, 2], launch] != 0).all()


def test_a_blend_whose_teacher_knows_every_product_leaves_the_part_alone(teacher_and_pipeline):
    from finrec.training.trees import TreeBlend

    teacher, pipeline = teacher_and_pipeline
    blend = TreeBlend(teacher, 0.5, 0.1)
    assert not blend.launches().any()
    part = np.ones((2, pipeline.n_products), dtype="float32")
    embeddings = np.ones((2, 3), dtype="float32")
    assert blend.with_launches(part, embeddings, np.ones((pipeline.n_products, 3), "float32"), part > 0) is part


def test_a_tree_blend_weighs_customers_who_hold_nothing_with_the_cold_weight(small_dataset, teacher_and_pipeline):
    from finrec.training.trees import TreeBlend

    teacher, pipeline = teacher_and_pipeline
    customers = small_dataset.customers.iloc[:6].reset_index(drop=True)
    held = pipeline.holdings_matrix(customers["customer_id"].to_numpy(), small_dataset.holdings)
    held[[0, 3]] = False
    assert held[[1, 2, 4, 5]].any(axis=1).all()
    logits = teacher.logits(customers, held=held)
    blend = TreeBlend(teacher, 0.6, 0.2, cold_weight=0.1)
    np.testing.assert_allclose(blend.weights(held), [0.1, 0.6, 0.6, 0.1, 0.6, 0.6])
    np.testing.assert_allclose(blend.part(customers, held), logits * (blend.weights(held) * 0.2)[:, None], rtol=1e-6)
    record = customers.iloc[0].to_dict()
    np.testing.assert_allclose(blend.record_part(record, held[:1]), 0.1 * 0.2 * logits[:1], rtol=1e-5, atol=1e-6)
    # A cold weight of 0 leaves those customers to the towers: the trees never run on them.
    rows = []
    real = teacher.logits

    def spy(frame, *args, **kwargs):
        rows.append(len(frame))
        return real(frame, *args, **kwargs)

    teacher.logits = spy
    try:
        part = TreeBlend(teacher, 0.6, 0.2, cold_weight=0.0).part(customers, held)
    finally:
        del teacher.logits
    assert rows == [4] and (part[[0, 3]] == 0).all()
    np.testing.assert_allclose(part[[1, 2, 4, 5]], 0.6 * 0.2 * logits[[1, 2, 4, 5]], rtol=1e-5, atol=1e-7)
    # A model saved before the cold weight blends every customer alike; the weight round-trips.
    assert TreeBlend(teacher, 0.6, 0.2).weights(held).tolist() == pytest.approx([0.6] * 6)
    again = TreeBlend.from_dict(blend.to_dict())
    assert again.cold_weight == 0.1 and "cold_weight" not in TreeBlend(teacher, 0.6, 0.2).to_dict()


def test_tree_blend_setting_is_checked_and_yaml_booleans_are_named():
    Config.from_dict({"model": {"tree_blend": "always"}})
    for bad in ("on", "sometimes"):
        with pytest.raises(ConfigError, match="model.tree_blend must be one of auto, always, never"):
            Config.from_dict({"model": {"tree_blend": bad}})
    # `tree_blend: off` in a YAML file arrives as False: the message says why.
    with pytest.raises(ConfigError, match="model.tree_blend: expected text, got the boolean False"):
        Config.from_dict({"model": {"tree_blend": False}})


def test_one_record_and_a_matrix_give_the_trees_the_frame_they_were_fitted_on(small_dataset, teacher_and_pipeline):
    teacher, _ = teacher_and_pipeline
    customers = small_dataset.customers.iloc[:40].copy().reset_index(drop=True)
    numeric = teacher.pipeline_.customer_numeric_[0].column
    category = next(iter(teacher.pipeline_.customer_vocab_))
    customers.loc[0, numeric] = np.nan  # missing
    customers[category] = customers[category].astype(object)
    customers.loc[1, category] = "a value never seen"
    customers.loc[2, category] = None
    held = teacher.pipeline_.holdings_matrix(customers["customer_id"].to_numpy(), small_dataset.holdings)
    frame = teacher.features(customers, held=held)
    matrix = teacher.matrix(customers, held=held)
    # LightGBM reads the frame's categories as their codes: both inputs predict the same.
    np.testing.assert_array_equal(
        teacher.booster_.predict(frame, raw_score=True), teacher.booster_.predict(matrix, raw_score=True)
    )
    assert np.isnan(matrix[0, 0]) and np.isnan(matrix[1:3, frame.columns.get_loc(f"cat_{category}")]).all()
    for row in range(5):
        record = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in customers.iloc[row].items()}
        np.testing.assert_array_equal(teacher.record_matrix(record, held[row : row + 1]), matrix[row : row + 1])


def _adoption_driven(dataset, seed: int = 0):
    """``dataset`` where adopting anything at all depends on age: customers over 50 keep their
    adoptions with probability 0.2, the others with 0.9 (so about 0.18 and 0.81 adopt)."""
    from finrec.data import schema as S

    customers = dataset.customers
    keep = np.random.default_rng(seed).random(len(customers)) < np.where(customers["age"] > 50, 0.2, 0.9)
    kept = dataset.interactions[S.CUSTOMER_ID].isin(customers[S.CUSTOMER_ID][keep])
    return type(dataset)(**{**vars(dataset), "interactions": dataset.interactions[kept].reset_index(drop=True)})


@pytest.fixture(scope="module")
def adoption_data(small_dataset):
    from finrec.training.trees import fit_adoption_model

    data = _adoption_driven(small_dataset)
    return data, fit_adoption_model(data, seed=0)


def test_an_adoption_model_learns_who_adopts_at_all(adoption_data):
    data, model = adoption_data
    customers = data.customers
    adopted = customers["customer_id"].isin(data.interactions["customer_id"]).to_numpy()
    pi = model.adoption_probability(customers, data.holdings)
    assert pi.shape == (len(customers),) and model.booster_ is not None and model.best_iteration_ > 1
    old = customers["age"].to_numpy() > 50
    # Each group's mean probability is its own adoption rate, and the groups are far apart.
    for group in (old, ~old):
        assert abs(pi[group].mean() - adopted[group].mean()) < 0.04, (pi[group].mean(), adopted[group].mean())
    assert pi[~old].mean() - pi[old].mean() > 0.4
    # Walked trees, LightGBM's own probabilities.
    x = model.matrix(customers, data.holdings)
    np.testing.assert_allclose(pi, model.booster_.predict(x, num_iteration=model.best_iteration_), rtol=1e-9)


def test_an_adoption_model_reads_the_count_of_products_held(adoption_data, teacher_and_pipeline):
    from finrec.training.trees import fit_adoption_model

    data, model = adoption_data
    customers = data.customers.iloc[:30]
    frame = model.features(customers, data.holdings)
    held = model.pipeline_.holdings_matrix(customers["customer_id"].to_numpy(), data.holdings)
    np.testing.assert_array_equal(frame["held_count"].to_numpy(), held.sum(axis=1))
    teacher, _ = teacher_and_pipeline
    assert "held_count" not in teacher.features(customers, data.holdings)  # the teacher is as it was
    blind = fit_adoption_model(data, seed=0, use_holdings=False)  # a model that must not see holdings
    assert not [c for c in blind.features(customers, data.holdings) if "held" in c]


def test_an_adoption_model_survives_json_and_scores_one_record_as_a_frame(adoption_data):
    import json

    from finrec.training.trees import LightGBMBaseline

    data, model = adoption_data
    raw = json.loads(json.dumps(model.to_dict()))
    assert raw["objective"] == "adoption"
    again = LightGBMBaseline.from_dict(raw)
    customers = data.customers.iloc[:200].reset_index(drop=True)
    pi = model.adoption_probability(customers, data.holdings)
    np.testing.assert_array_equal(again.adoption_probability(customers, data.holdings), pi)
    held = model.pipeline_.holdings_matrix(customers["customer_id"].to_numpy(), data.holdings)
    for row in range(5):
        record = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in customers.iloc[row].items()}
        assert again.record_adoption_probability(record, held[row : row + 1])[0] == pi[row]
    with pytest.raises(ValueError, match="objective='adoption'"):
        LightGBMBaseline.from_dict({**raw, "objective": "multiclass"}).adoption_probability(customers, data.holdings)


def test_an_adoption_model_with_too_few_who_adopted_nothing_is_the_base_rate(small_dataset):
    from finrec.data import schema as S
    from finrec.training.trees import fit_adoption_model

    # Every customer adopted something but one: too few to split, the model is the rate itself.
    interactions = small_dataset.interactions
    ids = small_dataset.customers[S.CUSTOMER_ID]
    everyone = interactions.iloc[np.arange(len(ids)) % len(interactions)].copy()
    everyone[S.CUSTOMER_ID] = ids.to_numpy()
    everyone = everyone[everyone[S.CUSTOMER_ID] != ids.iloc[0]]
    data = type(small_dataset)(**{**vars(small_dataset), "interactions": everyone.reset_index(drop=True)})
    model = fit_adoption_model(data, seed=0)
    assert model.booster_ is None
    pi = model.adoption_probability(data.customers, data.holdings)
    np.testing.assert_allclose(pi, (len(ids) - 1) / len(ids))
    assert model.record_adoption_probability({}, np.zeros((1, model.pipeline_.n_products), bool))[0] == pi[0]


def test_trees_code_integer_categories_alike_as_float_int_or_text(coded_education):
    # The trees look categories up in the pipeline's vocabulary too: a chunk read as int (4), or
    # as text, must give the rows the float column (4.0, beside a gap) gives.
    from finrec.training.trees import LightGBMBaseline

    model = LightGBMBaseline(max_rounds=2, num_threads=1).fit(coded_education.dataset)
    holdings = coded_education.dataset.holdings
    expected = model.matrix(coded_education.as_float, holdings)
    for frame in (coded_education.as_int, coded_education.as_text):
        np.testing.assert_array_equal(model.matrix(frame, holdings), expected)
    j = list(model.features(coded_education.as_float.iloc[:1]).columns).index("cat_education")
    assert not np.isnan(expected[:, j]).any()
    record = coded_education.as_int.iloc[0].to_dict()
    held = model.pipeline_.holdings_matrix([record["customer_id"]], holdings)
    row = model.matrix(coded_education.as_float.iloc[:1], holdings)
    for value in (int(record["education"]), float(record["education"]), str(record["education"])):
        got = model.record_matrix({**record, "education": value}, held)
        assert got[0, j] == row[0, j], f"education {value!r}"

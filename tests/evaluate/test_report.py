import pytest

from finrec.evaluate.metrics import metric_keys
from finrec.evaluate.report import format_table


@pytest.mark.parametrize("k", [5, 100, 1000])
def test_format_table_keeps_columns_apart_for_any_k(k):
    # With k = 1000 the header read "map@1000precision@1000": the names outgrew a fixed column.
    keys = metric_keys(k)
    metrics = {key: 0.5 for key in keys} | {"customers": 7}
    header, rule, row = format_table({"model": metrics}, k).splitlines()
    assert header.split() == ["ranker", *keys, "customers"]
    assert row.split() == ["model", *["0.5000"] * len(keys), "7"]
    assert len(rule) == len(header) == len(row)


@pytest.mark.parametrize("k", [0, -3, 3.0, None, "5"])
def test_evaluate_refuses_a_k_that_is_no_positive_integer_before_scoring(k):
    # From a notebook: a bare ValueError from the metrics, after the model had scored everyone.
    from finrec.errors import FinrecError
    from finrec.evaluate.report import evaluate

    with pytest.raises(FinrecError, match="k must be a positive integer"):
        evaluate(object(), object(), k=k)  # refused before the model or the data is read


# ---------------------------------------------------------------------------- the probabilities
def _naive_check(probability, held, adopted, bins):
    """The check's figures by plain loops over the pairs."""
    import math

    pairs = [(probability[i, j], float(adopted[i, j])) for i in range(len(held)) for j in range(held.shape[1])]
    pairs = [pair for pair, free in zip(pairs, (~held).ravel()) if free]
    n = len(pairs)
    rate = sum(y for _, y in pairs) / n
    ordered = sorted(pairs, key=lambda pair: pair[0])  # ties: any order gives the same bin means here
    size, extra = divmod(n, bins)
    ece, start = 0.0, 0
    for b in range(bins):
        part = ordered[start : start + size + (b < extra)]
        start += len(part)
        ece += len(part) * abs(sum(p for p, _ in part) / len(part) - sum(y for _, y in part) / len(part))
    products = []
    for j in range(held.shape[1]):
        ps = [probability[i, j] for i in range(len(held)) if not held[i, j]]
        observed = sum(int(adopted[i, j]) for i in range(len(held)) if not held[i, j])
        spread = sum(p * (1 - p) for p in ps)
        products.append((sum(ps), observed, (observed - sum(ps)) / math.sqrt(spread) if spread > 0 else None))
    return {
        "brier": sum((p - y) ** 2 for p, y in pairs) / n,
        "reference_brier": sum((rate - y) ** 2 for _, y in pairs) / n,
        "log_loss": -sum(y * math.log(max(p, 1e-12)) + (1 - y) * math.log(max(1 - p, 1e-12)) for p, y in pairs) / n,
        "ece": ece / n,
        "products": products,
    }


def test_the_probability_check_is_the_recommenders_probabilities_against_the_adoptions(trained, small_dataset):
    """Every customer who did not object, adopters of nothing included, x the products not held:
    the same probabilities ``Recommender.probabilities`` gives, scored as plain loops score them."""

    from finrec.data.compliance import customer_profile
    from finrec.evaluate.report import probability_check
    from finrec.recommend.recommender import Recommender

    check = probability_check(trained, small_dataset, bins=7)
    data = small_dataset
    objected = customer_profile(data.customers, trained.pipeline.full_schema.customers)["objected"]
    assert objected.any() and check["objected_left_out"] == int(objected.sum())
    customers = data.customers[~objected].reset_index(drop=True)
    ids = customers["customer_id"].to_numpy()
    assert check["customers"] == len(ids) and check["sampled_from"] is None
    rec = Recommender(trained, data)
    probability = rec.probabilities(rec.context(customers, data.holdings)).astype("float64")
    held = trained.pipeline.holdings_matrix(ids, data.holdings)
    adopted = trained.pipeline.holdings_matrix(ids, data.interactions) & ~held
    assert (~adopted.any(axis=1)).sum() > 50  # customers who adopted nothing are in
    naive = _naive_check(probability, held, adopted, bins=7)
    assert check["pairs"] == int((~held).sum())
    assert check["observed_adoptions"] == int(adopted.sum())
    assert check["predicted_adoptions"] == pytest.approx(probability[~held].sum(), rel=1e-6)
    for key in ("brier", "reference_brier", "log_loss", "ece"):
        assert check[key] == pytest.approx(naive[key], rel=1e-5), key
    for row, (predicted, observed, z) in zip(check["products"], naive["products"]):
        assert row["predicted"] == pytest.approx(predicted, rel=1e-5) and row["observed"] == observed
        assert (row["z"] is None) == (z is None) and (z is None or row["z"] == pytest.approx(z, rel=1e-5, abs=1e-6))
    assert len(check["reliability"]) == 7 and sum(r["pairs"] for r in check["reliability"]) == check["pairs"]
    assert check["brier"] < check["reference_brier"]  # they tell the pairs apart better than the rate
    sample = probability_check(trained, small_dataset, max_customers=300, seed=1)
    assert sample["customers"] == 300 and sample["sampled_from"] == len(ids)
    assert probability_check(trained, small_dataset, max_customers=300, seed=1) == sample


def test_a_product_whose_probabilities_are_off_is_named(trained, small_dataset):
    """Tripling one product's probabilities (a level a stale calibration could have) puts it
    far beyond chance, and moves no other product; the text names it. (On the model's own
    training customers several products are off already: they are no held-out data.)"""
    import copy

    import numpy as np

    from finrec.evaluate.report import format_probability_check, off_by_chance, probability_check

    before = probability_check(trained, small_dataset)
    j = int(np.argmax([r["observed"] for r in before["products"]]))

    class Tripled:
        def __init__(self, inner):
            self.inner, self.needs_adoption = inner, inner.needs_adoption

        def adoption_probability(self, *args, **kwargs):
            return self.inner.adoption_probability(*args, **kwargs)

        def __call__(self, scores, held, adoption=None):
            out = self.inner(scores, held, adoption)
            out[:, j] = np.minimum(3 * out[:, j], 1)
            return out

    off = copy.copy(trained)
    off.calibration = Tripled(trained.calibration)
    after = probability_check(off, small_dataset)
    z_before, z_after = before["products"][j]["z"], after["products"][j]["z"]
    assert z_after < -3 and z_after < z_before - 3
    assert [r["z"] for k, r in enumerate(after["products"]) if k != j] == [
        r["z"] for k, r in enumerate(before["products"]) if k != j
    ]
    name = after["products"][j]["product_id"]
    assert name in {r["product_id"] for r in off_by_chance(after)}
    assert after["products"][j]["chance"] < before["products"][j]["chance"] * 1e-6
    text = format_probability_check(after)
    assert f"    {name}: predicted {after['products'][j]['predicted']:,.1f}" in text
    assert after["brier"] > before["brier"]


def test_a_product_not_on_offer_is_left_out_of_the_probability_check(trained, withdrawing_bank, withdrawn):
    """A product the bank withdrew (``products.on_offer``) before the data's month could not be
    adopted: its predicted adoptions against none would read as a level error and move the
    totals. It is left out and named; every other product's figures stay as they were. One the
    data shows adopted was on offer that month (``on_offer`` is today's word): it is checked."""
    from finrec.data.io import find_table, load_dataset, read_table, write_table
    from finrec.evaluate.report import format_probability_check, probability_check

    data = withdrawing_bank()
    adopted = probability_check(trained, load_dataset(data))
    assert adopted["not_on_offer"] == [] and withdrawn in {r["product_id"] for r in adopted["products"]}
    path = find_table(data, "interactions")
    interactions = read_table(path, ("customer_id", "product_id"))
    write_table(interactions[interactions["product_id"] != withdrawn], path)
    after = probability_check(trained, load_dataset(data))
    full = probability_check(trained, load_dataset(_without_on_offer(data)))
    kept = [r for r in full["products"] if r["product_id"] != withdrawn]
    assert withdrawn in {r["product_id"] for r in full["products"]} and full["not_on_offer"] == []
    assert after["not_on_offer"] == [withdrawn] and after["products"] == kept
    gone = next(r for r in full["products"] if r["product_id"] == withdrawn)
    assert gone["observed"] == 0 and gone["predicted"] > 1  # it would read as a level error
    assert after["observed_adoptions"] == full["observed_adoptions"]
    assert after["predicted_adoptions"] == pytest.approx(full["predicted_adoptions"] - gone["predicted"], rel=1e-6)
    assert after["pairs"] < full["pairs"]
    text = format_probability_check(after)
    assert f"left out, not on offer in the data's products table and adopted by no one in it: '{withdrawn}'" in text


def _without_on_offer(data):
    """``data`` with its schema's ``products.on_offer`` removed (every product on offer)."""
    import yaml

    from finrec.data import schema as S

    schema = yaml.safe_load((data / S.SCHEMA_FILE).read_text())
    del schema[S.PRODUCTS]["on_offer"]
    (data / S.SCHEMA_FILE).write_text(yaml.safe_dump(schema, sort_keys=False))
    return data


@pytest.mark.parametrize(
    "observed, predicted", [(3, 0.2), (0, 0.2), (0, 9.0), (1, 4.0), (12, 4.0), (40, 9.5), (4, 4.0), (0, 0.0)]
)
def test_chance_is_the_two_sided_poisson_tail_below_ten_predicted(observed, predicted):
    stats = pytest.importorskip("scipy.stats")
    from finrec.evaluate.report import _chance

    if predicted == 0:
        assert _chance(observed, predicted, float("nan")) is None
        return
    tails = stats.poisson.cdf(observed, predicted), stats.poisson.sf(observed - 1, predicted)
    assert _chance(observed, predicted, float("nan")) == pytest.approx(min(1.0, 2 * min(tails)), rel=1e-9, abs=1e-15)


def test_chance_from_ten_predicted_is_the_normals_two_sided_tail():
    stats = pytest.importorskip("scipy.stats")
    from finrec.evaluate.report import _chance

    for z in (-4.0, -1.0, 0.0, 2.5, 3.0):
        assert _chance(0, 10.0, z) == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-12)


def _stub_model(products, points):
    """A model that knows ``products`` and scores them ``points`` for every customer."""
    from types import SimpleNamespace

    import numpy as np

    from finrec.data.ids import as_arrow_text
    from finrec.features import link_matrix

    class Pipeline:
        product_ids_ = list(products)
        product_popularity_ = list(points)

        def holdings_matrix(self, ids, links):
            return link_matrix(ids, as_arrow_text(self.product_ids_), links)

    points = np.asarray(points, dtype="float32")
    return SimpleNamespace(pipeline=Pipeline(), score=lambda customers, h, hh: np.tile(points, (len(customers), 1)))


def test_an_adoption_of_a_product_the_model_does_not_know_is_a_miss():
    # A tester's monthly cycle: NEW launched after last month's model was trained. Its
    # adoptions left the task, so the old model scored higher on this month's data than the
    # model trained with NEW (which `finrec compare` graded the other way).
    from types import SimpleNamespace

    import pandas as pd
    import pytest

    from finrec.evaluate.report import evaluate, unknown_adoptions

    ids = [f"c{i}" for i in range(40)]
    dataset = SimpleNamespace(
        schema=SimpleNamespace(customers=SimpleNamespace(id="customer_id")),
        customers=pd.DataFrame({"customer_id": ids}),
        interactions=pd.DataFrame({"customer_id": ids, "product_id": ["A"] * 30 + ["NEW"] * 10}),
        holdings=pd.DataFrame({"customer_id": ["c0"], "product_id": ["B"]}),
        holdings_history=None,
        ground_truth=None,
    )
    old = _stub_model(["A", "B", "C"], [3, 2, 1])
    assert unknown_adoptions(old.pipeline, dataset) == {"NEW": 10}
    results = evaluate(old, dataset)
    assert results["model"]["customers"] == 40
    assert results["model"]["ndcg@5"] == pytest.approx(30 / 40)  # a NEW adoption is never a hit
    assert results["model"]["mrr"] == pytest.approx(30 / 40)
    assert results["popularity"]["customers"] == results["random"]["customers"] == 40
    assert results["random"]["hit_rate@5"] == pytest.approx(30 / 40)
    # the model that knows NEW is graded on the same 40 customers
    new = _stub_model(["A", "B", "C", "NEW"], [3, 2, 1, 0])
    assert unknown_adoptions(new.pipeline, dataset) == {}
    assert evaluate(new, dataset)["model"]["customers"] == 40


def test_fairness_counts_adoptions_of_an_unknown_product_as_misses(trained, small_dataset):
    # `evaluate --fairness` still graded each group on the model's catalogue alone, after the
    # main table counted adoptions of a launch as misses: the two tables disagreed.
    import dataclasses

    import pandas as pd

    from finrec.data.compliance import without_objections
    from finrec.evaluate.fairness import fairness_report
    from finrec.evaluate.report import evaluate

    interactions = small_dataset.interactions
    adopters = list(dict.fromkeys(interactions["customer_id"].astype(str)))
    newcomers = [c for c in small_dataset.customers["customer_id"].astype(str) if c not in set(adopters)][:40]
    launch = pd.DataFrame({"customer_id": newcomers + adopters[:40], "product_id": "GREEN_SAVER"})
    with_launch = dataclasses.replace(small_dataset, interactions=pd.concat([interactions, launch], ignore_index=True))

    def graded(dataset):
        groups = fairness_report(trained, dataset, k=5)["columns"]["gender"]["groups"].values()
        evaluated = sum(group["evaluated"] for group in groups)
        mean = {
            m: sum(g[m] * g["evaluated"] for g in groups if g["evaluated"]) / evaluated for m in ("ndcg@5", "recall@5")
        }
        return evaluated, mean

    # the newcomers adopted only the launch: they join the task, with nothing the model can hit
    assert graded(with_launch)[0] > graded(small_dataset)[0]
    # over the groups, each metric is evaluate's, which counts the launch's adoptions as misses
    evaluated, mean = graded(with_launch)
    overall = evaluate(trained, without_objections(with_launch)[0], k=5)["model"]
    assert evaluated == overall["customers"]
    for metric, value in mean.items():
        assert value == pytest.approx(overall[metric], rel=1e-6), metric
    assert mean["recall@5"] < graded(small_dataset)[1]["recall@5"]

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

    from finrec.evaluate.fairness import fairness_report

    interactions = small_dataset.interactions
    adopters = set(interactions["customer_id"].astype(str))
    newcomers = [c for c in small_dataset.customers["customer_id"].astype(str) if c not in adopters][:40]
    launch = pd.DataFrame({"customer_id": newcomers, "product_id": "GREEN_SAVER"})
    with_launch = dataclasses.replace(small_dataset, interactions=pd.concat([interactions, launch], ignore_index=True))

    def evaluated(dataset):
        groups = fairness_report(trained, dataset, k=5)["columns"]["gender"]["groups"]
        return sum(group["evaluated"] for group in groups.values())

    # the newcomers adopted only the launch: they join the task, with nothing the model can hit
    assert evaluated(with_launch) > evaluated(small_dataset)

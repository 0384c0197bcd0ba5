import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from finrec.errors import DataError
from finrec.features import FeaturePipeline


@pytest.fixture(scope="module")
def pipeline(small_dataset):
    return FeaturePipeline(small_dataset.schema).fit(small_dataset)


def test_numeric_standardized_and_log_for_money(pipeline, small_dataset):
    x = pipeline.transform_customers(small_dataset.customers, small_dataset.holdings)["customer_numeric"]
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-3)
    logged = {s.column for s in pipeline.customer_numeric_ if s.log}
    assert {"income", "savings"} <= logged and "age" not in logged


def test_missing_numeric_imputed_with_train_median(pipeline, small_dataset):
    row = small_dataset.customers.iloc[[0]].copy()
    row["age"] = np.nan
    x = pipeline.transform_customers(row)["customer_numeric"]
    stats = next(s for s in pipeline.customer_numeric_ if s.column == "age")
    j = [s.column for s in pipeline.customer_numeric_].index("age")
    assert x[0, j] == pytest.approx((stats.median - stats.mean) / stats.std, rel=1e-5)
    assert np.isfinite(x).all()


def test_unseen_category_maps_to_oov(pipeline, small_dataset):
    row = small_dataset.customers.iloc[[0]].copy()
    row["region"] = "Atlantis"
    i = list(pipeline.customer_vocab_).index("region")
    assert pipeline.transform_customers(row)[f"customer_cat_{i}"][0] == 0
    known = pipeline.transform_customers(small_dataset.customers.iloc[[0]])[f"customer_cat_{i}"][0]
    assert known > 0


def test_holdings_multi_hot(pipeline, small_dataset):
    ids = small_dataset.customer_ids[:50]
    matrix = pipeline.holdings_matrix(ids, small_dataset.holdings)
    held = small_dataset.holdings[small_dataset.holdings["customer_id"].isin(ids)]
    assert matrix.sum() == len(held)
    first = held.iloc[0]
    r = list(ids).index(first["customer_id"])
    assert matrix[r, pipeline.product_ids_.index(first["product_id"])]


def test_json_roundtrip_transforms_identically(pipeline, small_dataset):
    import json

    again = FeaturePipeline.from_dict(json.loads(json.dumps(pipeline.to_dict())))
    a = pipeline.transform_customers(small_dataset.customers, small_dataset.holdings)
    b = again.transform_customers(small_dataset.customers, small_dataset.holdings)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    pa, pb = pipeline.transform_products(small_dataset.products), again.transform_products(small_dataset.products)
    for key in pa:
        np.testing.assert_array_equal(pa[key], pb[key])


def test_missing_column_at_inference(pipeline, small_dataset):
    with pytest.raises(DataError, match="income"):
        pipeline.transform_customers(small_dataset.customers.drop(columns=["income"]))


def test_fit_uses_only_given_customers(small_dataset):
    half = small_dataset.subset_customers(small_dataset.customer_ids[:100])
    a = FeaturePipeline(small_dataset.schema).fit(half)
    b = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    assert a.customer_numeric_[0].mean != b.customer_numeric_[0].mean


def test_exclude_protected_drops_columns(small_dataset):
    p = FeaturePipeline(small_dataset.schema, exclude_protected=True).fit(small_dataset)
    used = [s.column for s in p.customer_numeric_] + list(p.customer_vocab_)
    assert "gender" not in used and "age" not in used


def test_transform_record_equals_frame_path(pipeline, small_dataset):
    rng = np.random.default_rng(0)
    rows = small_dataset.customers.sample(25, random_state=1).copy()
    rows.loc[rows.index[:5], "income"] = np.nan
    rows.loc[rows.index[5:8], "region"] = "Atlantis"
    for _, row in rows.iterrows():
        held = sorted(rng.choice(pipeline.n_products, size=2, replace=False).tolist())
        links = pd.DataFrame(
            {"customer_id": [row["customer_id"]] * 2, "product_id": [pipeline.product_ids_[j] for j in held]}
        )
        frame = pipeline.transform_customers(row.to_frame().T.astype(small_dataset.customers.dtypes.to_dict()), links)
        record = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.to_dict().items()}
        fast = pipeline.transform_record(record, held)
        for key in frame:
            np.testing.assert_allclose(fast[key], frame[key], atol=1e-6, err_msg=key)


def test_a_refitted_pipeline_transforms_records_with_its_new_statistics(small_dataset):
    pipeline = FeaturePipeline(small_dataset.schema).fit(small_dataset)
    record = {k: v for k, v in small_dataset.customers.iloc[0].to_dict().items() if v == v}
    before = pipeline.transform_record(record)["customer_numeric"]
    richer = small_dataset.customers.assign(income=small_dataset.customers["income"] * 3)
    pipeline.fit(dataclasses.replace(small_dataset, customers=richer))
    after = pipeline.transform_record(record)["customer_numeric"]
    frame = pipeline.transform_customers(small_dataset.customers.iloc[:1])["customer_numeric"]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, frame, atol=1e-6)


def test_categorical_dtype_codes_equal_text_codes(pipeline, small_dataset):
    # A Parquet dictionary column arrives as a pandas Categorical: the codes come from its few
    # categories, and must equal the row-by-row lookup of the same values as text, missing
    # and unseen values included.
    rows = small_dataset.customers.iloc[:50].copy()
    rows.loc[rows.index[3], "region"] = None
    rows.loc[rows.index[7], "region"] = "Atlantis"
    as_text = pipeline.transform_customers(rows)
    as_category = pipeline.transform_customers(rows.astype({col: "category" for col in pipeline.customer_vocab_}))
    for name in as_text:
        np.testing.assert_array_equal(as_category[name], as_text[name])
    i = list(pipeline.customer_vocab_).index("region")
    assert as_category[f"customer_cat_{i}"][3] == 0 and as_category[f"customer_cat_{i}"][7] == 0


def test_split_edges_are_narrow_bins_at_the_thresholds():
    from finrec.features import SPLIT_HALF_WIDTH as H
    from finrec.features import with_split_edges

    edges = [0.0, 1.0, 2.0, 3.0]
    # A threshold between edges adds two; one on an edge replaces it; inf and NaN are skipped.
    merged = with_split_edges(edges, [1.5, 2.0, np.inf, np.nan])
    assert merged == [0.0, 1.0, 1.5 - H, 1.5 + H, 2.0 - H, 2.0 + H, 3.0]
    assert np.all(np.diff(merged) > 0)
    # The bin budget: thresholds given first are kept first.
    assert with_split_edges(edges, [0.5, 1.5, 2.5], max_bins=5) == [0.0, 0.5 - H, 0.5 + H, 1.0, 2.0, 3.0]


def test_split_bins_make_a_step_of_the_encoding_at_a_raw_threshold(small_dataset):
    from finrec.model.numeric import PiecewiseLinearEmbedding

    pipeline = FeaturePipeline(small_dataset.schema, numeric_bins=8).fit(small_dataset)
    j = [s.column for s in pipeline.customer_numeric_].index("income")  # a log-scaled column
    before = list(pipeline.customer_bins_[j])
    pipeline.add_split_bins({"income": [50_000.0], "no_such_column": [1.0]})
    edges = pipeline.customer_bins_[j]
    assert len(edges) == len(before) + 2
    # 100 below and above 50,000 (the bin is 0.002 standard deviations of log income wide,
    # about 60), the encoding differs by one whole bin: a step at the threshold, however wide
    # the quantile bins around it (thousands).
    stats = pipeline.customer_numeric_[j]
    x = stats.transform(np.array([49_900.0, 50_100.0]))
    layer = PiecewiseLinearEmbedding([edges], dim=1)
    enc = np.asarray(layer.encode(x[:, None].astype("float32")))[:, 0, :]
    step = enc[1] - enc[0]
    assert np.isclose(step.max(), 1.0, atol=1e-3) and np.sort(step)[-2] < 0.05
    with pytest.raises(ValueError, match="no numeric bins"):
        FeaturePipeline(small_dataset.schema, numeric_bins=0).fit(small_dataset).add_split_bins({"income": [1.0]})


@pytest.fixture(scope="module")
def coded_pipeline(coded_education):
    return FeaturePipeline(coded_education.dataset.schema).fit(coded_education.dataset)


def test_integer_codes_read_as_float_int_or_text_are_the_same_inputs(coded_pipeline, coded_education):
    # A CSV column of codes with a gap is float (4.0), the same rows in a chunk without one are
    # int (4): both, and the text "4", must find the vocabulary the float column fitted.
    assert coded_pipeline.customer_vocab_["education"] == ["1", "2", "3", "4"]
    expected = coded_pipeline.transform_customers(coded_education.as_float)
    for frame in (coded_education.as_int, coded_education.as_text):
        got = coded_pipeline.transform_customers(frame)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    cat = f"customer_cat_{list(coded_pipeline.customer_vocab_).index('education')}"
    assert (expected[cat] > 0).all()
    record = coded_education.as_int.iloc[0].to_dict()
    for value in (int(record["education"]), float(record["education"]), str(record["education"])):
        got = coded_pipeline.transform_record({**record, "education": value})[cat]
        assert got[0] == expected[cat][0], f"education {value!r}"


def test_a_pipeline_saved_with_float_text_categories_still_finds_them(coded_pipeline, coded_education):
    # Saved before the category rule, the vocabulary of a float column said "4.0"; each entry
    # keeps its position (the code the model learned) and 4, 4.0 and "4" find it.
    raw = json.loads(json.dumps(coded_pipeline.to_dict()))  # as pipeline.json holds it
    assert raw.pop("category_rule") == 1  # files written before the rule have no stamp
    raw["customer_vocab"]["education"] = [f"{float(v)}" for v in coded_pipeline.customer_vocab_["education"]]
    old = FeaturePipeline.from_dict(raw)
    assert old.customer_vocab_["education"] == coded_pipeline.customer_vocab_["education"]
    # A file written under the rule is read as written: there "1.0" was text (a reviewer).
    stamped = FeaturePipeline.from_dict({**raw, "category_rule": 1})
    assert stamped.customer_vocab_["education"] == raw["customer_vocab"]["education"]
    expected = coded_pipeline.transform_customers(coded_education.as_float)
    for frame in (coded_education.as_float, coded_education.as_int, coded_education.as_text):
        got = old.transform_customers(frame)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)

"""The customer side of the compliance rules (finrec.data.compliance.customer_profile)."""

import numpy as np
import pandas as pd
import pytest

from finrec.data import schema as S
from finrec.data.compliance import customer_profile

TABLE = S.SYNTHETIC.schema().customers  # objective: investment_objective; client_type: not named


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([1.0, np.nan, 4.0, 2.5]),
        pd.Series([1, None, 4, 2.5], dtype=object),
        pd.Series(["1", None, "4", "2.5"], dtype=object),
        pd.Series(["1", np.nan, "4", "2.5"], dtype=object),
        pd.Series(["1", None, "4", "2.5"], dtype="str"),
        pd.Series(["1", None, "4", "2.5"], dtype="string"),
        pd.Series([1, None, 4.0, "2.5"], dtype=object),
        pd.Series(pd.Categorical([1.0, None, 4.0, 2.5])),
        pd.Series(pd.Categorical(["1", None, "4", "2.5"])),
    ],
    ids=["float", "numbers", "text", "text_nan", "arrow_text", "string", "mixed", "float_cat", "text_cat"],
)
def test_labels_are_category_text_with_none_for_missing_whatever_the_column_type(column):
    customers = pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "investment_objective": column})
    before = customers.copy()
    profile = customer_profile(customers, TABLE)
    labels = profile["objective"]
    assert labels.dtype == object and labels.tolist() == ["1", None, "4", "2.5"]
    assert labels[1] is None  # not NaN or pd.NA: the rules compare labels with ==
    assert profile["client_type"].tolist() == [None] * 4  # a role the schema does not name
    pd.testing.assert_frame_equal(customers, before)  # the caller's column is left as it was


@pytest.mark.parametrize("padded", ["income ", " income", "\tincome\n"])
def test_a_padded_label_is_the_label_and_a_blank_one_is_unknown(padded):
    """The products' list cells are trimmed ("growth | income"), the customers' labels were not:
    a customer whose objective an export padded was in no negative target market that lists it,
    and a blank objective passed as known, where a missing one excludes (a compliance tester,
    2026-12). Table and request read the label alike."""
    from finrec.data.compliance import LabelTerm, in_negative_target_market, outside_target_market, record_profile

    customers = pd.DataFrame(
        {"customer_id": ["a", "b", "c"], "investment_objective": pd.Series([padded, "  ", "income"], dtype=object)}
    )
    profile = customer_profile(customers, TABLE)
    assert profile["objective"].tolist() == ["income", None, "income"]
    negative = {"negative_objectives": LabelTerm.from_cells(["income|retirement"])}
    positive = {"objectives": LabelTerm.from_cells(["income"])}
    applies = np.array([True])
    assert in_negative_target_market(profile, negative, applies)[:, 0].tolist() == [True, True, True]
    assert outside_target_market(profile, positive, applies)[:, 0].tolist() == [False, True, False]
    for value, label in ((padded, "income"), ("  ", None)):
        one = record_profile({"investment_objective": value}, TABLE)
        assert one["objective"].tolist() == [label]
        assert in_negative_target_market(one, negative, applies)[0, 0]


@pytest.mark.parametrize("written", ["Income", "INCOME", "income"])
def test_a_label_matches_whatever_its_case(written):
    """A customer table exported as "Income" was in no negative target market listing "income"
    (the product offered) and outside every positive one listing it (a compliance tester,
    2026-12): labels match without regard to case, in a table and in a request alike, and the
    reason shows the product's label as its cell writes it."""
    from finrec.data.compliance import LabelTerm, in_negative_target_market, outside_target_market, record_profile

    customers = pd.DataFrame(
        {"customer_id": [str(i) for i in range(100)], "investment_objective": [written] * 99 + ["growth"]}
    )
    batch = customer_profile(customers, TABLE)  # over 64 rows: the hashed path
    one = record_profile({"investment_objective": written}, TABLE)  # a request: the lookup path
    negative = {"negative_objectives": LabelTerm.from_cells(["Income|retirement", "growth"])}
    positive = {"objectives": LabelTerm.from_cells(["income", "GROWTH"])}
    applies = np.array([True, True])
    assert in_negative_target_market(batch, negative, applies)[:99].tolist() == [[True, False]] * 99
    assert in_negative_target_market(batch, negative, applies)[99].tolist() == [False, True]
    assert outside_target_market(batch, positive, applies)[:99].tolist() == [[False, True]] * 99
    assert outside_target_market(batch, positive, applies)[99].tolist() == [True, False]
    assert in_negative_target_market(one, negative, applies).tolist() == [[True, False]]
    assert outside_target_market(one, positive, applies).tolist() == [[False, True]]
    assert negative["negative_objectives"].listed(0) == ["Income", "retirement"]

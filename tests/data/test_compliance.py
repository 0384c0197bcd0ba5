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

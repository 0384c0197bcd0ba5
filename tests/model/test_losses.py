import numpy as np
import pytest
from keras import ops

from finrec.model import losses as L

P, M, S, O = L.POSITIVE, L.MASKED, L.SAMPLED, L.OTHER


def value(loss, y, scores):
    return float(ops.convert_to_numpy(loss(np.array(y, "float32"), np.array(scores, "float32"))))


def lse(x):
    x = np.asarray(x, "float64")
    return np.log(np.exp(x - x.max()).sum()) + x.max()


def test_catalogue_softmax_masks_held_products():
    # Row: positive 0.5, other 0.2, held 0.9 (must not count as a negative); temperature 0.5.
    got = value(L.CatalogueSoftmax(temperature=0.5), [[P, O, M]], [[0.5, 0.2, 0.9]])
    assert got == pytest.approx(lse([1.0, 0.4]) - 1.0, rel=1e-5)


def test_catalogue_softmax_is_mean_over_rows():
    y = [[P, O, O], [O, O, P]]
    s = [[0.1, 0.2, 0.3], [0.3, 0.0, -0.2]]
    expected = np.mean([lse(np.array(s[0])) - 0.1, lse(np.array(s[1])) - (-0.2)])
    assert value(L.CatalogueSoftmax(temperature=1.0), y, s) == pytest.approx(expected, rel=1e-5)


def test_in_batch_uses_only_batch_positives_with_logq():
    log_q = np.log([0.5, 0.25, 0.25]).astype("float32")
    # Batch positives are products 0 and 1; product 2 is not in the batch, so it is no negative.
    y = [[P, O, O], [O, P, O]]
    s = [[0.4, 0.1, 0.9], [0.2, 0.3, 0.9]]
    row0 = lse([0.4 - log_q[0], 0.1 - log_q[1]]) - (0.4 - log_q[0])
    row1 = lse([0.2 - log_q[0], 0.3 - log_q[1]]) - (0.3 - log_q[1])
    assert value(L.InBatchSoftmax(log_q, temperature=1.0), y, s) == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_in_batch_accidental_hit_is_one_column():
    log_q = np.zeros(3, "float32")
    # Both rows took up product 0: the other row's positive is the same column, never a negative.
    y = [[P, O, O], [P, O, O]]
    assert value(L.InBatchSoftmax(log_q, temperature=1.0), y, [[0.3, 0.9, 0.9], [0.1, 0.5, 0.5]]) == pytest.approx(
        0.0, abs=1e-6
    )


def test_in_batch_masks_held_products_of_the_row():
    log_q = np.zeros(2, "float32")
    y = [[P, M], [O, P]]  # row 0 holds product 1, which is row 1's positive
    s = [[0.0, 5.0], [0.0, 1.0]]
    row1 = lse([0.0, 1.0]) - 1.0
    assert value(L.InBatchSoftmax(log_q, temperature=1.0), y, s) == pytest.approx(row1 / 2, rel=1e-5)


def test_sampled_softmax_only_sampled_candidates():
    log_q = np.log([0.1, 0.2, 0.7]).astype("float32")
    y = [[P, S, O]]
    s = [[0.5, 0.4, 2.0]]
    expected = lse([0.5 - log_q[0], 0.4 - log_q[1]]) - (0.5 - log_q[0])
    assert value(L.SampledSoftmax(log_q, temperature=1.0), y, s) == pytest.approx(expected, rel=1e-5)


def test_triplet_hard_negative():
    # Positive 0.5; negatives 0.45 (hardest), 0.1; held 0.9 ignored; margin 0.2 -> 0.2 - 0.5 + 0.45.
    got = value(L.HardNegativeTriplet(margin=0.2, hard_negatives=1), [[P, O, O, M]], [[0.5, 0.45, 0.1, 0.9]])
    assert got == pytest.approx(0.15, rel=1e-5)


def test_triplet_zero_when_margin_met():
    got = value(L.HardNegativeTriplet(margin=0.1, hard_negatives=2), [[P, O, O]], [[0.9, 0.2, 0.1]])
    assert got == pytest.approx(0.0, abs=1e-7)


def test_log_sampling_probability_is_normalized():
    log_q = L.log_sampling_probability(np.array([0, 3, 6]))
    assert np.exp(log_q).sum() == pytest.approx(1.0)
    assert log_q[0] < log_q[1] < log_q[2]


def test_softmax_gradient_pushes_positive_up():
    import keras

    scores = keras.Variable(np.array([[0.1, 0.2, 0.3]], "float32"))
    loss = L.CatalogueSoftmax(temperature=0.1)
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradient check written with TensorFlow")
    import tensorflow as tf

    with tf.GradientTape() as tape:
        out = loss(np.array([[P, O, O]], "float32"), scores)
    grad = tape.gradient(out, scores).numpy()[0]
    assert grad[0] < 0 and grad[1] > 0 and grad[2] > 0


@pytest.mark.parametrize(
    "loss",
    [
        L.CatalogueSoftmax(temperature=1.0),
        L.InBatchSoftmax(np.zeros(3, "float32"), 1.0),
        L.HardNegativeTriplet(margin=0.5, hard_negatives=1),
    ],
    ids=lambda x: type(x).__name__,
)
def test_sample_weight_weights_rows(loss):
    # Two rows with different losses: weights (3, 1) give the weighted mean, (1, 0) the first row
    # alone; dropping sample_weight silently (as before) would return the plain mean for both.
    y = np.array([[P, O, O], [O, P, O]], "float32")
    s = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.3]], "float32")
    # Each row's loss within the batch (in-batch rows share candidates, so not row by row).
    rows, terms = loss.row_terms(y, s)
    one = list(ops.convert_to_numpy(rows) / ops.convert_to_numpy(terms))
    assert one[0] != pytest.approx(one[1])
    weighted = float(ops.convert_to_numpy(loss(y, s, sample_weight=np.array([3.0, 1.0], "float32"))))
    first = float(ops.convert_to_numpy(loss(y, s, sample_weight=np.array([1.0, 0.0], "float32"))))
    assert weighted == pytest.approx((3 * one[0] + one[1]) / 4, rel=1e-5)
    assert first == pytest.approx(one[0], rel=1e-5)
    assert value(loss, y, s) == pytest.approx(np.mean(one), rel=1e-5)


def test_all_zero_weights_give_zero_not_nan():
    got = L.CatalogueSoftmax(1.0)(
        np.array([[P, O]], "float32"), np.array([[0.1, 0.2]], "float32"), sample_weight=np.zeros(1, "float32")
    )
    assert float(ops.convert_to_numpy(got)) == 0.0

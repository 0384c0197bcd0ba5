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


def naive_distillation(roles, q, scores, weight, temperature):
    """Row by row: (1 - w) * label cross-entropy (held masked) + w * cross-entropy against q
    over the products q allows."""
    rows = []
    for r, qs, s in zip(roles, q, scores):
        s = np.asarray(s, "float64") / temperature
        keep = [j for j, role in enumerate(r) if role != M]
        label = lse(s[keep]) - s[r.index(P)]
        allowed = [j for j, v in enumerate(qs) if v > 0]
        soft = lse(s[allowed]) - sum(qs[j] * s[j] for j in allowed) if allowed else 0.0
        rows.append((1 - weight) * label + weight * soft)
    return np.mean(rows)


def test_distillation_matches_a_naive_loop():
    roles = [[P, O, M, O], [O, O, P, O], [M, M, M, P]]
    # Held products get no teacher mass; the last row's only allowed product is its positive.
    q = [[0.5, 0.3, 0.0, 0.2], [0.1, 0.1, 0.7, 0.1], [0.0, 0.0, 0.0, 1.0]]
    scores = [[0.3, -0.1, 0.9, 0.2], [0.0, 0.5, 0.1, -0.4], [0.2, 0.1, 0.0, 0.3]]
    for weight in (0.0, 0.5, 0.8):
        loss = L.Distillation(L.CatalogueSoftmax(temperature=0.2), weight)
        got = value(loss, np.concatenate([roles, q], axis=1), scores)
        assert got == pytest.approx(naive_distillation(roles, q, scores, weight, 0.2), rel=1e-5)
    # Weight 0 is the label loss alone.
    plain = value(L.CatalogueSoftmax(temperature=0.2), roles, scores)
    assert value(L.Distillation(L.CatalogueSoftmax(0.2), 0.0), np.concatenate([roles, q], axis=1), scores) == (
        pytest.approx(plain, rel=1e-6)
    )


def test_distillation_row_without_teacher_mass_adds_nothing():
    # Every product held but the positive, and the teacher gave no mass: the soft term is 0, not
    # a huge number from an empty logsumexp.
    roles, q, scores = [[P, M]], [[0.0, 0.0]], [[0.1, 0.5]]
    got = value(L.Distillation(L.CatalogueSoftmax(1.0), 0.5), np.concatenate([roles, q], axis=1), scores)
    assert got == pytest.approx(0.5 * 0.0, abs=1e-6)  # the label term of a one-product softmax is 0


def test_distillation_pulls_scores_towards_the_teacher():
    import keras

    roles = np.array([[P, O, O]], "float32")
    q = np.array([[0.1, 0.1, 0.8]], "float32")  # the teacher prefers product 2, the label product 0
    scores = keras.Variable(np.zeros((1, 3), "float32"))
    loss = L.Distillation(L.CatalogueSoftmax(1.0), 0.9)
    y = np.concatenate([roles, q], axis=1)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value_ = loss(y, scores)
    grad = ops.convert_to_numpy(tape.gradient(value_, scores.value))[0]
    assert grad[2] < 0 < grad[1]  # descending the gradient raises product 2 and lowers product 1


def test_member_mean_of_distillation_splits_scores_not_targets():
    roles = [[P, O, O], [O, P, M]]
    q = [[0.6, 0.4, 0.0], [0.2, 0.8, 0.0]]
    blocks = [
        np.array([[0.1, 0.2, 0.3], [0.3, 0.0, -0.2]], "float32"),
        np.array([[0.5, -0.2, 0.1], [0.0, 0.1, 0.4]], "float32"),
    ]
    base = L.Distillation(L.CatalogueSoftmax(0.5), 0.7)
    y = np.concatenate([roles, q], axis=1).astype("float32")
    combined = float(L.MemberMean(base, 2)(y, np.concatenate(blocks, axis=1)))
    assert combined == pytest.approx(np.mean([float(base(y, b)) for b in blocks]), rel=1e-5)

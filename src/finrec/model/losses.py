"""Retrieval losses over a catalogue of P products, built from small pieces (TFRS style).

The model outputs cosine similarities ``scores`` [B, P] between each example's customer and every
product. The target ``y_true`` [B, P] marks each product's role for that example:

- ``POSITIVE`` (1): the product the customer took up (exactly one per row);
- ``MASKED`` (-1): never a negative: products the customer holds and the customer's other
  positives (so a second adoption is not pushed down: the accidental-hit rule);
- ``SAMPLED`` (2): a sampled negative (``SampledSoftmax`` only; drawn by the data pipeline);
- ``OTHER`` (0): every other product.

Because every example is scored against the catalogue in column form, an item that appears in
a batch twice is one column, so in-batch and sampled negatives never contain duplicates of the
positive; logQ correction still matters, since the negatives are not drawn uniformly.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

POSITIVE, MASKED, SAMPLED, OTHER = 1.0, -1.0, 2.0, 0.0
_NEG_INF = -1e9


def positive_mask(y_true):
    """[B, P] -> bool [B, P]."""
    return ops.equal(y_true, POSITIVE)


def mask_logits(logits, keep):
    """Set logits outside ``keep`` (bool [B, P]) to a very low value. [B, P] -> [B, P]."""
    return ops.where(keep, logits, ops.full_like(logits, _NEG_INF))


def logq_correct(logits, log_q):
    """Subtract the log sampling probability of each column: [B, P] - [P] -> [B, P]."""
    return logits - ops.expand_dims(log_q, 0)


def softmax_cross_entropy(logits, positive):
    """Per row ``logsumexp(logits) - logit(positive)``. [B, P], bool [B, P] -> [B]."""
    positive_logit = ops.sum(ops.where(positive, logits, ops.zeros_like(logits)), axis=1)
    return ops.logsumexp(logits, axis=1) - positive_logit


def weighted_mean(values, counts, sample_weight=None):
    """``sum_i w_i values_i / sum_i w_i counts_i`` (0 when the denominator is 0): each row's
    loss ``values`` [B] averaged over the ``counts`` [B] of terms it holds, rows weighted by
    ``sample_weight`` [B] (1 when None). -> scalar."""
    if sample_weight is not None:
        weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        values, counts = values * weight, counts * weight
    total = ops.sum(counts)
    return ops.where(total > 0, ops.sum(values) / ops.maximum(total, 1e-12), ops.zeros_like(total))


class RetrievalLoss(keras.losses.Loss):
    """Base class: ``row_terms(y_true, scores) -> (loss [B], terms [B])`` with the role-coded
    target above; the loss is the mean over terms, each row weighted by ``sample_weight`` [B]
    when one is given (a customer's importance, say)."""

    def __init__(self, temperature: float = 0.1, name: str | None = None):
        super().__init__(name=name or type(self).__name__.lower(), reduction="none")
        self.temperature = temperature

    def __call__(self, y_true, y_pred, sample_weight=None):
        # The reduction happens here, not in Keras: rows are not independent for in-batch
        # negatives, and a triplet row holds several terms.
        values, counts = self.row_terms(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"))
        return weighted_mean(values, counts, sample_weight)

    def call(self, y_true, y_pred):
        return self(y_true, y_pred)

    def row_terms(self, y_true, scores):
        """One softmax cross-entropy term per row: ``(row_loss(y_true, scores), ones)``."""
        values = self.row_loss(y_true, scores)
        return values, ops.ones_like(values)


class CatalogueSoftmax(RetrievalLoss):
    """Softmax over every product the customer does not hold (exact; no sampling)."""

    def row_loss(self, y_true, scores):
        keep = ops.not_equal(y_true, MASKED)
        return softmax_cross_entropy(mask_logits(scores / self.temperature, keep), positive_mask(y_true))


class InBatchSoftmax(RetrievalLoss):
    """Negatives are the other examples' positives in the batch (YouTube / TFRS retrieval).

    ``log_q`` [P]: log of each product's share of the training positives, the probability that
    it appears as an in-batch candidate; subtracting it removes the popularity bias (Yi et al.,
    2019). Products that are a positive of several rows form one column, which removes
    accidental hits.
    """

    def __init__(self, log_q: np.ndarray, temperature: float = 0.1, name: str | None = None):
        super().__init__(temperature, name)
        self.log_q = np.asarray(log_q, dtype="float32")

    def row_loss(self, y_true, scores):
        positive = positive_mask(y_true)
        in_batch = ops.any(positive, axis=0, keepdims=True)  # [1, P]
        keep = ops.logical_and(ops.logical_or(positive, in_batch), ops.not_equal(y_true, MASKED))
        logits = logq_correct(scores / self.temperature, ops.convert_to_tensor(self.log_q))
        return softmax_cross_entropy(mask_logits(logits, keep), positive)


class SampledSoftmax(RetrievalLoss):
    """Negatives drawn per example from ``q`` by the data pipeline (``SAMPLED`` in ``y_true``),
    with logQ correction."""

    def __init__(self, log_q: np.ndarray, temperature: float = 0.1, name: str | None = None):
        super().__init__(temperature, name)
        self.log_q = np.asarray(log_q, dtype="float32")

    def row_loss(self, y_true, scores):
        positive = positive_mask(y_true)
        keep = ops.logical_or(positive, ops.equal(y_true, SAMPLED))
        logits = logq_correct(scores / self.temperature, ops.convert_to_tensor(self.log_q))
        return softmax_cross_entropy(mask_logits(logits, keep), positive)


class HardNegativeTriplet(RetrievalLoss):
    """Triplet margin loss on cosine scores with hard-negative mining:
    ``mean(relu(margin - s(positive) + s(negative)))`` over the ``hard_negatives`` highest-scoring
    non-positive, non-masked products of each row."""

    def __init__(self, margin: float = 0.2, hard_negatives: int = 1, name: str | None = None):
        super().__init__(1.0, name)
        self.margin = margin
        self.hard_negatives = hard_negatives

    def row_terms(self, y_true, scores):
        positive = positive_mask(y_true)
        positive_score = ops.sum(ops.where(positive, scores, ops.zeros_like(scores)), axis=1, keepdims=True)
        negatives = ops.logical_and(ops.logical_not(positive), ops.not_equal(y_true, MASKED))
        candidate_scores = mask_logits(scores, negatives)
        hardest, _ = ops.top_k(candidate_scores, k=self.hard_negatives)
        valid = ops.cast(ops.greater(hardest, _NEG_INF / 2), "float32")
        violation = ops.relu(self.margin - positive_score + hardest) * valid
        return ops.sum(violation, axis=1), ops.sum(valid, axis=1)


class Distillation(RetrievalLoss):
    """``(1 - weight) * base + weight * soft cross-entropy`` against a teacher's distribution.

    ``y_true`` [B, 2P]: the role-coded target (columns 0..P) then the teacher's probabilities q
    (columns P..2P; 0 where the product is held, summing to 1 over the rest). The soft term is
    ``logsumexp_{q > 0}(s / T) - sum_p q_p s_p / T`` per row: the cross-entropy of the student's
    softmax over the products the teacher allows."""

    def __init__(self, base: RetrievalLoss, weight: float, name: str | None = None):
        super().__init__(base.temperature, name or f"{base.name}_distilled")
        self.base, self.weight = base, float(weight)

    def row_terms(self, y_true, scores):
        n_products = ops.shape(scores)[1]
        roles, q = y_true[:, :n_products], y_true[:, n_products:]
        values, counts = self.base.row_terms(roles, scores)
        logits = scores / self.temperature
        allowed = ops.greater(q, 0.0)
        soft = ops.logsumexp(mask_logits(logits, allowed), axis=1) - ops.sum(q * logits, axis=1)
        soft = ops.where(ops.any(allowed, axis=1), soft, ops.zeros_like(soft))  # nothing allowed: no term
        return (1.0 - self.weight) * values + self.weight * soft * counts, counts


class MemberMean(RetrievalLoss):
    """An ensemble's loss (``finrec.model.ensemble``): ``base`` applied to each of the ``members``
    score blocks of ``scores`` [B, k * P] (member i in columns i * P .. (i + 1) * P) against the
    one target [B, P], averaged over the members' terms: each member learns as its own model."""

    def __init__(self, base: RetrievalLoss, members: int, name: str | None = None):
        super().__init__(base.temperature, name or f"{base.name}_member_mean")
        self.base, self.members = base, int(members)

    def row_terms(self, y_true, scores):
        n_products = ops.shape(scores)[1] // self.members
        values, counts = 0.0, 0.0
        for i in range(self.members):
            v, c = self.base.row_terms(y_true, scores[:, i * n_products : (i + 1) * n_products])
            values, counts = values + v, counts + c
        return values, counts


def log_sampling_probability(positive_counts: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """log q for each product from its count of training positives (add-``smoothing``)."""
    counts = np.asarray(positive_counts, dtype="float64") + smoothing
    return np.log(counts / counts.sum()).astype("float32")

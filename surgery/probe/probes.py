"""Linear probes for "does the model know it doesn't know": the maths, as pure functions.

For each block, a logistic-regression probe (scikit-learn, standardised features) learns to tell
unanswerable from answerable questions from the last-prompt-token hidden state. Three AUROCs per block:

- ``base``: trained and tested on the base model;
- ``sft``: trained and tested on the fine-tuned model;
- ``transfer``: trained on the base model, tested on the fine-tuned model unchanged (the paper's test of
  "preserved recognition": the base's direction for "I don't know this" still works after SFT).

A fourth number guards the reading: ``surface``, the AUROC of the same kind of probe on a bag of words of
the question text. Benchmarks whose unanswerable questions are *worded* differently (SelfAware's come
from Quora-style open questions, its answerable ones from trivia sets) let any model separate the
classes from wording alone; hidden-state probes only show knowledge-boundary recognition to the extent
they beat that baseline.

AUROC is rank-based, so a uniform shift of the probe's score (e.g. SFT moving the mean hidden state along
the probe direction) does not count against the transfer; only a change in *ordering* does.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: A fine-tuned model whose best transfer AUROC reaches this still carries the base's recognition.
PRESERVED_AUROC = 0.75
#: Below this, a probe does not separate the classes. With ~120 test items and ~30 blocks the best
#: layer of pure noise reached 0.60-0.62 in simulations (400 items, 576 dims), so anything under 0.65
#: is indistinguishable from chance.
SEPARATES_AUROC = 0.65
#: Each class needs this many items so that both the train and the test split hold several of them.
MIN_PER_CLASS = 10

KINDS = ("base", "sft", "transfer")


def near_duplicate_groups(texts: Sequence[str], threshold: float = 0.6) -> list[int]:
    """A group number per text: mutual nearest neighbours with word-set Jaccard >= ``threshold`` are paired.

    Some benchmarks pair near-identical questions with opposite labels (FalseQA: "What does the black
    vulture of accipitridae eat?" vs "... of cathartidae ..."). With one of a pair in the training set and
    the other in the test set, a probe that merely recognises the wording scores *below* chance, so
    :func:`stratified_split` keeps each pair on one side. Only mutual best matches are paired (groups of
    at most two), so templated questions cannot chain into one group too big to place.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    n = len(texts)
    groups = list(range(n))
    if n < 2:
        return groups
    try:
        words = CountVectorizer(binary=True, token_pattern=r"(?u)\b\w+\b").fit_transform(texts)
    except ValueError:  # no words at all
        return groups
    sizes = np.asarray(words.sum(axis=1)).ravel()
    overlap = (words @ words.T).tocoo()
    off = overlap.row != overlap.col
    rows, cols, inter = overlap.row[off], overlap.col[off], overlap.data[off]
    jaccard = inter / np.maximum(sizes[rows] + sizes[cols] - inter, 1)
    keep = jaccard >= threshold
    rows, cols, jaccard = rows[keep], cols[keep], jaccard[keep]
    order = np.lexsort((cols, -jaccard, rows))  # per row: highest overlap first, then lowest index
    rows, cols = rows[order], cols[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    best = np.full(n, -1)
    best[rows[first]] = cols[first]
    for i in range(n):
        j = best[i]
        if j > i and best[j] == i:
            groups[j] = i
    return groups


def stratified_split(
    ids: Sequence[str],
    labels: Sequence[int],
    test_fraction: float = 0.3,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices, stratified by label, decided by a hash of (seed, item id).

    The split depends only on the ids and the seed, not on the order the items arrive in, so the same
    item is on the same side in every run and for both models. With ``groups``, every member of a group
    lands on the same side (whole groups are taken in hash order while they fit each label's quota).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be between 0 and 1")
    labels = np.asarray(labels)
    n = len(ids)
    groups = list(range(n)) if groups is None else list(groups)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)

    def key(g: int) -> str:
        return min(hashlib.sha256(f"{seed}:{ids[i]}".encode()).hexdigest() for i in members[g])

    classes, counts = np.unique(labels, return_counts=True)
    sizes = zip(classes.tolist(), counts.tolist(), strict=False)
    quota = {c: min(k - 1, max(1, round(test_fraction * k))) for c, k in sizes}
    taken = dict.fromkeys(quota, 0)
    test: list[int] = []
    for g in sorted(members, key=key):
        need = {c: 0 for c in quota}
        for i in members[g]:
            need[labels[i].item()] += 1
        if all(taken[c] + need[c] <= quota[c] for c in quota):
            test.extend(members[g])
            for c in quota:
                taken[c] += need[c]
        if taken == quota:
            break
    test_idx = np.array(sorted(test), dtype=int)
    train_idx = np.array(sorted(set(range(n)) - set(test)), dtype=int)
    if (
        len(set(groups)) < n
        and any(len(np.unique(labels[part])) < len(quota) for part in (train_idx, test_idx) if len(part))
        or not len(test_idx)
    ):
        log.warning("grouped split left a class out of one side; splitting items one by one instead")
        return stratified_split(ids, labels, test_fraction, seed)
    return train_idx, test_idx


def train_probe(features: np.ndarray, labels: np.ndarray, *, c: float = 1.0, seed: int = 0) -> Any:
    """A standardised L2 logistic-regression probe (scikit-learn pipeline) fitted on (n, d) features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    probe.fit(features, labels)
    return probe


def probe_auroc(probe: Any, features: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of the probe's score (positive class: label 1)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, probe.decision_function(features)))


def auroc_stderr(auroc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUROC, to read differences against noise."""
    a = min(max(auroc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


@dataclass
class ProbeCurves:
    """AUROC per block (index 0 = block 1) for the three probes, plus the split sizes."""

    base: list[float]
    sft: list[float]
    transfer: list[float]
    n_train: int
    n_test: int
    n_test_pos: int
    n_test_neg: int
    surface: float | None = None  # bag-of-words baseline on the question text

    def best(self, kind: str) -> tuple[int, float]:
        """(1-based block, AUROC) of the best block for ``kind``."""
        values = getattr(self, kind)
        i = int(np.argmax(values))
        return i + 1, float(values[i])

    def to_dict(self) -> dict:
        return asdict(self)


def layer_aurocs(
    base_states: np.ndarray,
    sft_states: np.ndarray,
    labels: Sequence[int],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    c: float = 1.0,
    seed: int = 0,
) -> ProbeCurves:
    """Per-block AUROC of base->base, sft->sft and base->sft probes on (items, blocks, hidden) arrays."""
    if base_states.shape != sft_states.shape:
        raise ValueError(f"hidden states differ in shape: base {base_states.shape} vs sft {sft_states.shape}")
    y = np.asarray(labels, dtype=int)
    for part, rows in (("train", train_idx), ("test", test_idx)):
        if len(np.unique(y[rows])) < 2:
            raise ValueError(f"the {part} split holds only one class")
    curves = {k: [] for k in KINDS}
    for layer in range(base_states.shape[1]):
        xb, xs = base_states[:, layer, :], sft_states[:, layer, :]
        base_probe = train_probe(xb[train_idx], y[train_idx], c=c, seed=seed)
        sft_probe = train_probe(xs[train_idx], y[train_idx], c=c, seed=seed)
        curves["base"].append(probe_auroc(base_probe, xb[test_idx], y[test_idx]))
        curves["sft"].append(probe_auroc(sft_probe, xs[test_idx], y[test_idx]))
        curves["transfer"].append(probe_auroc(base_probe, xs[test_idx], y[test_idx]))
    n_pos = int(y[test_idx].sum())
    return ProbeCurves(
        **curves, n_train=len(train_idx), n_test=len(test_idx), n_test_pos=n_pos, n_test_neg=len(test_idx) - n_pos
    )


def surface_auroc(
    texts: Sequence[str],
    labels: Sequence[int],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    c: float = 1.0,
    seed: int = 0,
) -> float:
    """AUROC of a logistic regression on TF-IDF word uni- and bigrams of the question text: the wording alone."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline

    y = np.asarray(labels, dtype=int)
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(C=c, max_iter=2000, random_state=seed),
    )
    model.fit([texts[i] for i in train_idx], y[train_idx])
    return float(roc_auc_score(y[test_idx], model.decision_function([texts[i] for i in test_idx])))


@dataclass(frozen=True)
class Verdict:
    """The one-line answer to "will a patch help?" and the category behind it."""

    status: str  # preserved | re-encoded | lost | inconclusive
    line: str


def verdict(curves: ProbeCurves, *, preserved: float = PRESERVED_AUROC, separates: float = SEPARATES_AUROC) -> Verdict:
    """Read the three curves, in this order:

    1. the base probe's best AUROC is under ``separates``: the base never linearly recognised its
       limits on this benchmark, so there is nothing for a patch to restore (inconclusive);
    2. the best transfer AUROC reaches ``preserved``: the base's recognition direction still works in
       the fine-tuned model, only the expression was lost, which is the case HCNR is built for;
    3. the fine-tuned model's own probe reaches ``preserved`` but the base probe does not transfer:
       the model still recognises, but in a different direction (a patch may help less);
    4. the base probe itself stays under ``preserved``: the base recognises too weakly for a loss to be
       told from noise (inconclusive);
    5. otherwise recognition is lost, and re-tuning on honesty data is the better tool.
    """
    bl, bv = curves.best("base")
    tl, tv = curves.best("transfer")
    sl, sv = curves.best("sft")
    if bv < separates:
        return Verdict(
            "inconclusive",
            f"inconclusive: the base model itself does not separate answerable from unanswerable "
            f"(best AUROC {bv:.2f} at layer {bl}), so there is no recognition for a patch to restore",
        )
    if tv >= preserved:
        return Verdict(
            "preserved",
            f"recognition preserved (best transfer AUROC {tv:.2f} at layer {tl}): patching is likely to help",
        )
    if sv >= preserved:
        return Verdict(
            "re-encoded",
            f"recognition re-encoded (fine-tuned probe AUROC {sv:.2f} at layer {sl}, but the base probe "
            f"transfers at only {tv:.2f}): a patch may help less than re-tuning",
        )
    if bv < preserved:
        return Verdict(
            "inconclusive",
            f"inconclusive: the base model separates answerable from unanswerable only weakly (best AUROC "
            f"{bv:.2f} at layer {bl}; transfer {tv:.2f}), too little to tell a loss from noise",
        )
    return Verdict(
        "lost",
        f"recognition lost (best transfer AUROC {tv:.2f}, fine-tuned probe {sv:.2f}): re-tuning is the better tool",
    )

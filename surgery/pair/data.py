"""Training sets of the demo pair (honesty alignment for M0, domain SFT for M1), from the "train" split.

They draw from the "fit" purpose of :mod:`surgery.hcnr.calibration_sets` (the product's pools), so
they never overlap a calibration set or an evaluation item; SFT data come from other benchmarks than
alignment data, so those two are disjoint by source.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from ..errors import SurgeryError
from ..evaluation.benchmarks import Item, load_items
from ..hcnr.calibration_sets import Example, answer_example, idk_example, sample, train_pool


def by_ids(benchmark: str, ids: Iterable[str], *, data_dir=None) -> list[Item]:
    """Items of ``benchmark`` in the order of ``ids``; a missing id is a data-folder mismatch."""
    index = {it.id: it for it in load_items(benchmark, data_dir=data_dir, split="all")}
    out = []
    for i in ids:
        if i not in index:
            raise SurgeryError(f"Item {i} is not in the {benchmark} data: the data folder differs from the recipe's.")
        out.append(index[i])
    return out


def alignment_set(
    known: Sequence[Item], *, data_dir=None, n_answerable: int = 300, n_unknown: int = 300, seed: int = 0
) -> list[Example]:
    """Honesty alignment (R-Tuning style): known questions keep their answer, unknown ones get IDK.

    ``known`` are SelfAware-answerable questions the base model answers correctly; PKQA (popular
    knowledge) fills the answerable half. The unknown half is SelfAware-unanswerable plus PUQA.
    """
    known = list(known)[:n_answerable]
    pkqa = sample(train_pool("pkqa", "fit", data_dir=data_dir), n_answerable - len(known), seed, "PKQA")
    n_sa = n_unknown // 2
    sa_unk = sample(
        train_pool("selfaware", "fit", data_dir=data_dir, answerable=False), n_sa, seed, "SelfAware unanswerable"
    )
    puqa = sample(train_pool("puqa", "fit", data_dir=data_dir), n_unknown - n_sa, seed, "PUQA")
    examples = [answer_example(it) for it in known + pkqa] + [idk_example(it) for it in sa_unk + puqa]
    random.Random(seed).shuffle(examples)
    return examples


def sft_set(*, data_dir=None, n_open: int = 250, n_task: int = 250, seed: int = 0) -> list[Example]:
    """Domain SFT data that always answer: NQ-open questions and qa_wikidata cloze items."""
    nq = sample(train_pool("nq_open", "fit", data_dir=data_dir), n_open, seed, "NQ-open")
    wd = sample(train_pool("qa_wikidata", "fit", data_dir=data_dir), n_task, seed, "qa_wikidata")
    examples = [answer_example(it) for it in nq + wd]
    random.Random(seed).shuffle(examples)
    return examples

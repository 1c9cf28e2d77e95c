"""Base keywords: readable ImageNet labels plus parent keywords that sum their labels' probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from shared.models.base_keywords import NOISE_FLOOR, Keyword, base_keywords, keyword_table

TENCH, CRANE_BIRD, BEAGLE, TABBY, TIGER_CAT, EGYPTIAN_CAT, TIGER = 0, 134, 162, 281, 282, 285, 292
CRANE_MACHINE, MAILLOT, TANK_SUIT, GRANNY_SMITH, POMEGRANATE = 517, 638, 639, 948, 957


def logits_for(probabilities: dict[int, float]) -> np.ndarray:
    """Logits whose softmax gives these probabilities, the rest spread evenly over the other labels."""
    rest = (1.0 - sum(probabilities.values())) / (1000 - len(probabilities))
    probs = np.full(1000, rest)
    for index, p in probabilities.items():
        probs[index] = p
    return np.log(probs) + 3.0  # any shift gives the same softmax


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def by_name(keywords: list[Keyword]) -> dict[str, Keyword]:
    return {keyword["name"]: keyword for keyword in keywords}


def children(parent: str) -> np.ndarray:
    table = keyword_table()
    return np.flatnonzero(table.membership[table.parents.index(parent)])


def test_table_follows_imagenet_order_with_readable_unique_names() -> None:
    table = keyword_table()
    assert len(table.labels) == 1000
    assert [table.labels[i] for i in (TENCH, TABBY, 999)] == ["tench", "tabby", "toilet tissue"]
    assert table.labels[CRANE_BIRD] == "crane (bird)" and table.labels[CRANE_MACHINE] == "crane (machine)"
    assert len({table.labels[MAILLOT], table.labels[TANK_SUIT]}) == 2
    names = [name.casefold() for name in (*table.labels, *table.parents)]
    assert len(names) == len(set(names))


def test_tabby_is_a_cat_and_an_animal_but_not_a_dog() -> None:
    keywords = base_keywords(logits_for({TABBY: 0.9}))
    names = by_name(keywords)
    assert names["tabby"]["kind"] == "label"
    assert {"cat", "feline", "mammal", "animal", "pet"} <= names.keys()
    assert all(names[parent]["kind"] == "parent" for parent in ("cat", "animal"))
    assert not {"dog", "wild cat", "big cat"} & names.keys()


def test_a_tiger_is_a_wild_cat_not_a_cat() -> None:
    names = by_name(base_keywords(logits_for({TIGER: 0.9})))
    assert {"tiger", "wild cat", "big cat", "feline", "animal"} <= names.keys()
    assert "cat" not in names and "pet" not in names


def test_parent_scores_are_the_sum_of_their_childrens_probabilities() -> None:
    logits = logits_for({TABBY: 0.4, TIGER_CAT: 0.3, EGYPTIAN_CAT: 0.2, BEAGLE: 0.05})
    probs = softmax(logits)
    names = by_name(base_keywords(logits))
    assert names["cat"]["score"] == pytest.approx(probs[[TABBY, TIGER_CAT, EGYPTIAN_CAT]].sum(), abs=1e-4)
    assert names["cat"]["score"] == pytest.approx(0.9, abs=1e-3)
    assert names["pet"]["score"] == pytest.approx(0.95, abs=1e-3)  # the cats and the beagle
    assert names["animal"]["score"] == pytest.approx(0.95, abs=1e-3)
    for parent in ("cat", "feline", "pet", "mammal", "animal"):
        counted = probs[children(parent)]
        assert names[parent]["score"] == pytest.approx(counted[counted >= NOISE_FLOOR].sum(), abs=1e-4)


def test_a_parent_is_listed_when_no_single_child_reaches_the_threshold() -> None:
    dogs = {index: 0.08 for index in range(151, 161)}  # ten breeds at 8% each
    names = by_name(base_keywords(logits_for(dogs), threshold=0.1))
    assert names["dog"]["score"] == pytest.approx(0.8, abs=1e-3)
    assert all(keyword["kind"] == "parent" for keyword in names.values())


def test_flat_logits_list_nothing() -> None:
    assert base_keywords(np.zeros(1000, dtype=np.float32)) == []
    assert base_keywords(np.full(1000, 7.5)) == []


def test_the_long_tail_does_not_inflate_broad_parents() -> None:
    # Half the mass on a tench, the other half spread over 999 labels (0.05% each): 397 of
    # them are animals, but that noise must not add 0.2 to "animal".
    names = by_name(base_keywords(logits_for({TENCH: 0.5})))
    assert names["animal"]["score"] == pytest.approx(0.5, abs=1e-3)
    assert names["fish"]["score"] == pytest.approx(0.5, abs=1e-3)


def test_threshold_is_respected() -> None:
    logits = logits_for({TABBY: 0.5, TIGER_CAT: 0.15, BEAGLE: 0.12, CRANE_BIRD: 0.06})
    for threshold in (0.05, 0.1, 0.2, 0.6):
        keywords = base_keywords(logits, threshold=threshold)
        assert keywords and all(keyword["score"] >= threshold for keyword in keywords)
    assert "crane (bird)" in by_name(base_keywords(logits, threshold=0.05))
    low, high = by_name(base_keywords(logits, threshold=0.1)), by_name(base_keywords(logits, threshold=0.2))
    assert {"tiger cat", "beagle", "dog"} <= low.keys() and not {"tiger cat", "beagle", "dog"} & high.keys()
    assert base_keywords(logits, threshold=0.99) == []


def test_top_k_limits_labels_not_parents() -> None:
    fruit = {index: 0.095 for index in range(GRANNY_SMITH, POMEGRANATE + 1)}  # 10 fruits
    fruit[GRANNY_SMITH] = 0.1
    keywords = base_keywords(logits_for(fruit), threshold=0.05, top_k=3)
    labels = [keyword["name"] for keyword in keywords if keyword["kind"] == "label"]
    assert len(labels) == 3 and labels[0] == "Granny Smith"
    assert by_name(keywords)["fruit"]["score"] == pytest.approx(0.955, abs=1e-3)
    assert len([k for k in base_keywords(logits_for(fruit), threshold=0.05) if k["kind"] == "label"]) == 10
    assert all(k["kind"] == "parent" for k in base_keywords(logits_for(fruit), threshold=0.05, top_k=0))


def test_items_are_sorted_unique_and_rounded() -> None:
    logits = logits_for({TABBY: 0.31, TIGER_CAT: 0.17, BEAGLE: 0.123456, CRANE_BIRD: 0.07, TENCH: 0.05})
    keywords = base_keywords(logits, threshold=0.01)
    scores = [keyword["score"] for keyword in keywords]
    assert len(set(scores)) > 5 and scores == sorted(scores, reverse=True)
    assert len({keyword["name"] for keyword in keywords}) == len(keywords)
    assert all(round(score, 4) == score for score in scores)
    assert by_name(keywords)["beagle"]["score"] == 0.1235


def test_equal_scores_list_the_most_specific_keyword_first() -> None:
    keywords = base_keywords(np.eye(1000)[TABBY] * 50.0)
    assert [keyword["name"] for keyword in keywords] == ["tabby", "cat", "feline", "pet", "mammal", "animal"]
    assert all(keyword["score"] == 1.0 for keyword in keywords)


def test_batch_shaped_logits_are_accepted_and_wrong_sizes_refused() -> None:
    logits = logits_for({TABBY: 0.9})
    assert base_keywords(logits[None, :]) == base_keywords(logits)
    with pytest.raises(ValueError):
        base_keywords(np.zeros(10))

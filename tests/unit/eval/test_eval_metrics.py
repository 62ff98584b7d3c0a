"""Caption metrics against pycocoevalcap itself; VQAv2 accuracy against hand-worked cases."""

import itertools
import random
import shutil

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from frozen_scale.eval.metrics import (
    caption_scores,
    normalize_caption,
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_score,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="pycocoevalcap's PTBTokenizer needs a Java runtime")

CANDIDATES = {
    "img1": "A big red circle on the left.",
    "img2": "a small blue square",
    "img3": "Two green triangles, side by side!",
    "img4": "a dog's ball isn't here",
}
REFERENCES = {
    "img1": ["a big red circle on the left .", "A large red circle to the left.",
             "red circle, big, left"],
    "img2": ["a small blue square", "a tiny blue box"],
    "img3": ["two green triangles next to each other", "a pair of green triangles"],
    "img4": ["the dog's ball is not here", "there isn't a ball"],
}


def _pycocoevalcap_directly():
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in CANDIDATES.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return bleu, cider


@needs_java
def test_caption_scores_equal_pycocoevalcap():
    scores = caption_scores(CANDIDATES, REFERENCES)
    bleu, cider = _pycocoevalcap_directly()
    assert [scores[f"bleu{n}"] for n in (1, 2, 3, 4)] == pytest.approx(bleu, abs=1e-12)
    assert scores["cider"] == pytest.approx(cider, abs=1e-12)
    assert 0 < scores["bleu4"] < scores["bleu1"] < 1
    assert scores["cider"] > 0
    # img1 matches its first reference after normalisation, img2 exactly; img3, img4 do not.
    assert scores["exact_match"] == 0.5


@needs_java
def test_simple_tokenizer_agrees_with_ptb_on_plain_captions():
    ptb = caption_scores(CANDIDATES, REFERENCES, tokenize="ptb")
    simple = caption_scores(CANDIDATES, REFERENCES, tokenize="simple")
    assert simple == pytest.approx(ptb, abs=1e-12)


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java on PATH
    with pytest.raises(RuntimeError, match="Java runtime"):
        caption_scores(CANDIDATES, REFERENCES)
    # the pure-Python tokenizer still works
    assert caption_scores(CANDIDATES, REFERENCES, tokenize="simple")["exact_match"] == 0.5


def test_caption_inputs_are_checked():
    with pytest.raises(ValueError, match="tokenize"):
        caption_scores(CANDIDATES, REFERENCES, tokenize="bpe")
    with pytest.raises(ValueError, match="same ids"):
        caption_scores({"img1": "a circle"}, REFERENCES, tokenize="simple")
    with pytest.raises(ValueError, match="non-empty list"):
        caption_scores({"x": "a circle"}, {"x": []}, tokenize="simple")
    with pytest.raises(ValueError, match="non-empty list"):
        caption_scores({"x": "a circle"}, {"x": "a circle"}, tokenize="simple")


def test_normalize_caption():
    assert normalize_caption("  A  Red\tCircle . ") == "a red circle"
    assert normalize_caption("a red circle.") == "a red circle"
    assert normalize_caption("a red circle") == "a red circle"
    assert normalize_caption("a red, circle") == "a red, circle"


@pytest.mark.parametrize("raw, normalised", [
    ("Two", "2"),
    ("the dog.", "dog"),
    ("isnt", "isn't"),
    ("isn't", "isn't"),
    ("yes!", "yes"),
    ("  An apple\n", "apple"),
    ("2.5", "2.5"),          # a period before a digit stays
    ("1,000", "1000"),       # digit-comma-digit: every mark is deleted, not spaced
    ("red,white", "red white"),
    ("red, white", "red white"),
    ("t-shirt", "t shirt"),
    ("none", "0"),
])
def test_normalize_vqa_answer(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def _ten(matching: int) -> list[str]:
    others = ["cat", "bird", "fish", "horse", "cow", "sheep", "goat", "pig", "duck", "hen"]
    return ["dog"] * matching + others[: 10 - matching]


# 10 answers, m of them equal to the prediction. Leaving out one of the m matching answers
# leaves m-1 matches, leaving out one of the 10-m others leaves m; each subset scores
# min(matches/3, 1) and the accuracy is the mean over the 10 subsets:
#   m=0: 0
#   m=1: (1*0   + 9*1/3) / 10 = 3/10  = 0.3
#   m=2: (2*1/3 + 8*2/3) / 10 = 18/30 = 0.6
#   m=3: (3*2/3 + 7*1)   / 10 = 9/10  = 0.9   (3 matches are not yet full credit)
#   m=4: (4*1   + 6*1)   / 10 = 1.0
@pytest.mark.parametrize("matching, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9),
                                                (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_ten_answers(matching, expected):
    assert vqa_accuracy("dog", _ten(matching)) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_normalises_the_prediction():
    assert vqa_accuracy("The dog.", _ten(3)) == pytest.approx(0.9)
    assert vqa_accuracy("Two", ["2"] * 4 + ["3"] * 6) == 1.0
    assert vqa_accuracy("isnt", ["isn't"] * 10) == 1.0
    assert vqa_accuracy("Yes!", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)


def test_vqa_accuracy_humans_as_official_or_fully_normalised():
    # Official: annotations are taken as already normalised; only punctuation is processed
    # (and only when the answers differ), so a raw "two" never equals the prediction's "2".
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    assert vqa_accuracy("2", ["two"] * 10, normalize_humans=True) == 1.0
    # Differing answers get processPunctuation: "red, white" -> "red white".
    assert vqa_accuracy("red white", ["red, white"] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    # ... but no strip afterwards: the official code turns "dog!" into "dog " (no match).
    assert vqa_accuracy("dog", ["dog!"] * 3 + ["cat"] * 7) == 0.0
    assert vqa_accuracy("dog", ["dog!"] * 3 + ["cat"] * 7,
                        normalize_humans=True) == pytest.approx(0.9)


def test_vqa_accuracy_fewer_answers():
    # One answer: exact match after normalising both sides.
    assert vqa_accuracy("Two", ["two"]) == 1.0
    assert vqa_accuracy("the red", ["red."]) == 1.0
    assert vqa_accuracy("red", ["blue"]) == 0.0
    # Three answers, two matching: leaving out a match (x2) leaves 1 -> 1/3, leaving out the
    # other (x1) leaves 2 -> 2/3: (1/3 + 1/3 + 2/3) / 3 = 4/9.
    assert vqa_accuracy("dog", ["dog", "dog", "cat"]) == pytest.approx(4 / 9, abs=1e-12)
    with pytest.raises(ValueError):
        vqa_accuracy("dog", [])


def _official_loop(prediction: str, answers: list[str]) -> float:
    """The evaluate() loop of the official vqaEval.py, on answers with distinct answer ids."""
    from frozen_scale.eval.metrics import _process_punctuation

    res = normalize_vqa_answer(prediction)
    gts = [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]
    if len({g["answer"] for g in gts}) > 1:
        for g in gts:
            g["answer"] = _process_punctuation(g["answer"])
    accs = []
    for datum in gts:
        others = [g for g in gts if g != datum]
        accs.append(min(1, len([g for g in others if g["answer"] == res]) / 3))
    return sum(accs) / len(accs)


def test_vqa_accuracy_equals_the_official_loop():
    rng = random.Random(0)
    pool = ["yes", "no", "2", "red", "dog!", "t-shirt", "1,000"]
    for _ in range(300):
        answers = [rng.choice(pool) for _ in range(10)]
        prediction = rng.choice(pool + ["Two", "the dog", "T-Shirt"])
        assert vqa_accuracy(prediction, answers) == pytest.approx(
            _official_loop(prediction, answers), abs=1e-12)


def test_vqa_score_is_the_mean_and_checks_ids():
    annotations = {1: _ten(1), 2: _ten(2), 3: ["yes"] * 10}
    predictions = {1: "dog", 2: "dog", 3: "no"}
    assert vqa_score(predictions, annotations) == pytest.approx((0.3 + 0.6 + 0.0) / 3)
    with pytest.raises(ValueError, match="1 without a prediction"):
        vqa_score({1: "dog", 2: "dog"}, annotations)
    with pytest.raises(ValueError, match="1 without annotations"):
        vqa_score({**predictions, 4: "x"}, annotations)
    with pytest.raises(ValueError):
        vqa_score({}, {})


def test_subsets_formula_matches_explicit_nine_of_ten_subsets():
    answers = _ten(2)
    explicit = [min(sum(a == "dog" for a in subset) / 3, 1)
                for subset in itertools.combinations(answers, 9)]
    assert vqa_accuracy("dog", answers) == pytest.approx(sum(explicit) / len(explicit))

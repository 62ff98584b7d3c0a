"""Scores for generated captions and VQA answers.

Captioning: BLEU-1..4 and CIDEr (pycocoevalcap's CIDEr-D, the number COCO reports as "CIDEr",
on pycocoevalcap's 0-10 scale) computed by pycocoevalcap's own scorers on text tokenized by its
own PTBTokenizer, plus exact match. The PTBTokenizer runs Stanford CoreNLP, a Java program that
pycocoevalcap ships as a jar: it needs a `java` executable (any Java runtime, 8 or newer) on PATH
and a writable pycocoevalcap package folder (it writes its input there as a temporary file).

VQA: the VQAv2 accuracy of the official evaluation (vqaEval.py): answers are normalised with its
processPunctuation / processDigitArticle rules, and a prediction scores the average, over the
leave-one-out subsets of the human answers (10 choose 9 for VQAv2), of min(#matches / 3, 1).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence

# --------------------------------------------------------------------------------------------
# Captioning
# --------------------------------------------------------------------------------------------

_TOKENIZERS = ("ptb", "simple")

# The tokens pycocoevalcap's PTBTokenizer wrapper drops after tokenizing.
_PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
     "...", ";"]
)
# PTB splits these clitics off the word before them ("dog's" -> "dog 's", "don't" -> "do n't").
_CLITIC = re.compile(r"(?i)(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_SIMPLE_TOKEN = re.compile(r"-[lr][rsc]b-|n't|'\w+|\w+|[^\w\s]+")
# PTB writes brackets as these names (lowercased by -lowerCase), which the wrapper keeps.
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}


def _simple_tokenize(text: str) -> str:
    """Approximate the PTB tokenizer without Java: lowercase, split clitics and punctuation, and
    drop the punctuation tokens pycocoevalcap drops. Equal to PTB on plain captions; may differ
    on unusual punctuation (brackets, quotes, abbreviations)."""
    text = _CLITIC.sub(r"\1 \2", text.lower().replace("\n", " "))
    for bracket, name in _PTB_BRACKETS.items():
        text = text.replace(bracket, f" {name} ")
    return " ".join(t for t in _SIMPLE_TOKEN.findall(text) if t not in _PTB_PUNCTUATION)


def _ptb_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    if shutil.which("java") is None:
        raise RuntimeError(
            "CIDEr/BLEU tokenization uses pycocoevalcap's PTBTokenizer, which runs Stanford "
            "CoreNLP in Java, and no `java` executable is on PATH. Install a Java runtime "
            "(e.g. `apt-get install default-jre-headless`, any Java 8+), or pass "
            "tokenize='simple' for an approximate pure-Python tokenizer."
        )
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    wrapped = {key: [{"caption": c} for c in caps] for key, caps in captions.items()}
    try:
        tokenized = PTBTokenizer().tokenize(wrapped)
    except OSError as err:
        raise RuntimeError(
            f"pycocoevalcap's PTBTokenizer could not run ({err}); it writes a temporary file into "
            "the pycocoevalcap package folder, which must be writable"
        ) from err
    # The wrapper does not check Java's exit status: a failed run silently yields fewer lines.
    if any(len(tokenized.get(key, [])) != len(caps) for key, caps in captions.items()):
        raise RuntimeError("pycocoevalcap's PTBTokenizer (java) returned incomplete output")
    return tokenized


def _tokenize(captions: dict[str, list[str]], tokenize: str) -> dict[str, list[str]]:
    if tokenize == "ptb":
        return _ptb_tokenize(captions)
    return {key: [_simple_tokenize(c) for c in caps] for key, caps in captions.items()}


def normalize_caption(text: str) -> str:
    """Light normalisation for exact match: lowercase, collapse whitespace, drop a final '.'."""
    text = " ".join(text.lower().split())
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def _check_caption_inputs(candidates: Mapping[str, str], references: Mapping[str, list[str]],
                          tokenize: str) -> None:
    if tokenize not in _TOKENIZERS:
        raise ValueError(f"tokenize must be one of {_TOKENIZERS}, got {tokenize!r}")
    if not candidates:
        raise ValueError("no candidates to score")
    if set(candidates) != set(references):
        missing = sorted(map(str, set(references) - set(candidates)))[:5]
        extra = sorted(map(str, set(candidates) - set(references)))[:5]
        raise ValueError(
            "candidates and references must have the same ids; "
            f"without a candidate: {missing}, without references: {extra}"
        )
    for key, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{key!r}] must be a non-empty list of strings")
        if not isinstance(candidates[key], str):
            raise ValueError(f"candidates[{key!r}] must be a string")


def caption_scores(candidates: Mapping[str, str], references: Mapping[str, list[str]],
                   tokenize: str = "ptb") -> dict[str, float]:
    """Corpus-level bleu1..bleu4, cider and exact_match of one candidate caption per id.

    tokenize="ptb" (default) is the COCO-standard PTBTokenizer (needs Java); "simple" is a
    pure-Python approximation for machines without Java; numbers from it are not comparable
    with published ones.
    """
    _check_caption_inputs(candidates, references, tokenize)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    keys = list(references)
    tok_refs = _tokenize({k: list(references[k]) for k in keys}, tokenize)
    tok_cands = _tokenize({k: [candidates[k]] for k in keys}, tokenize)
    bleu, _ = Bleu(4).compute_score(tok_refs, tok_cands, verbose=0)
    cider, _ = Cider().compute_score(tok_refs, tok_cands)
    exact = sum(
        normalize_caption(candidates[k]) in {normalize_caption(r) for r in references[k]}
        for k in keys
    ) / len(keys)
    scores = {f"bleu{n}": float(b) for n, b in enumerate(bleu, start=1)}
    scores.update(cider=float(cider), exact_match=float(exact))
    return scores


# --------------------------------------------------------------------------------------------
# VQA (port of the rules of the official VQA evaluation, vqaEval.py)
# --------------------------------------------------------------------------------------------

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset(["a", "an", "the"])
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!"]
# As written in the official code: "(?!<=" is a lookahead, not a lookbehind, so every period not
# followed by a digit goes (so "2.5" keeps its point, "dog." and "u.s." lose theirs).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official code passes re.UNICODE (32) where re.sub expects `count`: at most 32 periods go.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    """vqaEval.processPunctuation: a mark next to a space (or any mark, when the text holds a
    digit-comma-digit) is deleted, otherwise replaced by a space; then periods are stripped."""
    out = text
    delete = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if delete or (p + " " in text) or (" " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """vqaEval.processDigitArticle: lowercase, number words to digits, drop articles, restore
    apostrophes of common contractions ("isnt" -> "isn't")."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
    """Normalise an answer exactly as the official VQA evaluation normalises a prediction."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(answer))


def vqa_accuracy(prediction: str, human_answers: Sequence[str], *,
                 normalize_humans: bool = False) -> float:
    """VQAv2 accuracy of one prediction against the human answers to one question.

    The prediction is normalised with `normalize_vqa_answer`. Human answers are treated as the
    official evaluation treats VQAv2 annotations (which were normalised when the data set was
    made): only processPunctuation is applied, and only when they are not all the same (so, as
    in the official code, a raw "two" never matches and "dog!" becomes "dog " and matches
    nothing). Pass normalize_humans=True for raw reference answers (hand-written, other data
    sets): they then get the full normalisation too.

    With m >= 2 answers the score is the mean over the m leave-one-out subsets of
    min(#answers in the subset equal to the prediction / 3, 1): for VQAv2's 10 answers this is the
    official "10 choose 9" average; with fewer answers the same formula is used (so 2 agreeing
    answers give only 1/3). With a single answer (the synthetic world's one canonical answer) the
    score is 1.0 if prediction and answer are equal after full normalisation of both, else 0.0.
    """
    if isinstance(human_answers, str) or not human_answers:
        raise ValueError("human_answers must be a non-empty list of strings")
    pred = normalize_vqa_answer(prediction)
    if len(human_answers) == 1:
        return float(pred == normalize_vqa_answer(human_answers[0]))
    if normalize_humans:
        humans = [normalize_vqa_answer(a) for a in human_answers]
    elif len(set(human_answers)) > 1:
        humans = [_process_punctuation(a) for a in human_answers]
    else:
        humans = list(human_answers)
    matches = [h == pred for h in humans]
    total = sum(matches)
    per_subset = [min(1.0, (total - left_out) / 3.0) for left_out in matches]
    return sum(per_subset) / len(per_subset)


def vqa_score(predictions: Mapping, annotations: Mapping, *,
              normalize_humans: bool = False) -> float:
    """Mean `vqa_accuracy` (0..1) over the questions of `annotations` {qid: [human answers]}.

    Every annotated question needs a prediction and every prediction an annotation (as the
    official evaluation requires); a mismatch is an error naming some of the ids.
    """
    if not annotations:
        raise ValueError("no annotations to score against")
    missing = set(annotations) - set(predictions)
    extra = set(predictions) - set(annotations)
    if missing or extra:
        raise ValueError(
            "predictions and annotations must cover the same question ids; "
            f"{len(missing)} without a prediction (e.g. {sorted(map(str, missing))[:5]}), "
            f"{len(extra)} without annotations (e.g. {sorted(map(str, extra))[:5]})"
        )
    total = sum(
        vqa_accuracy(predictions[qid], answers, normalize_humans=normalize_humans)
        for qid, answers in annotations.items()
    )
    return total / len(annotations)

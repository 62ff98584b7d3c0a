"""VQAv2-style question and annotation files for `frozen-scale eval --task vqa`.

Questions (`v2_OpenEnded_mscoco_val2014_questions.json` layout):
    {"questions": [{"question_id": 1, "image_id": 42, "question": "What is on the couch?"}, ...]}
Annotations (`v2_mscoco_val2014_annotations.json` layout):
    {"annotations": [{"question_id": 1, "image_id": 42, "answers": [{"answer": "dog"}, ...]}, ...]}

The image of a question is the shard sample whose __key__ is the image id written as text.
"""

from __future__ import annotations

from dataclasses import dataclass

from frozen_scale.config import InputError
from frozen_scale.eval.coco import read_input_json


@dataclass(frozen=True)
class Question:
    question_id: str
    image_key: str
    question: str
    answers: tuple[str, ...]
    """The human answers (10 in VQAv2)."""


def _read(path: str, field: str) -> list[dict]:
    data = read_input_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(field), list):
        raise InputError(f"{path}: expected a json object with a '{field}' list")
    return data[field]


def load_vqa(questions_path: str, annotations_path: str) -> list[Question]:
    """Questions joined with their human answers, in the questions file's order."""
    answers = {}
    for ann in _read(annotations_path, "annotations"):
        try:
            answers[str(ann["question_id"])] = tuple(a["answer"] for a in ann["answers"])
        except (KeyError, TypeError) as err:
            raise InputError(f"{annotations_path}: malformed annotation {ann}: missing {err}") from None
    out = []
    for q in _read(questions_path, "questions"):
        try:
            qid, image_id, text = str(q["question_id"]), q["image_id"], q["question"]
        except KeyError as err:
            raise InputError(f"{questions_path}: question {q} lacks {err}") from None
        if qid not in answers or not answers[qid]:
            raise InputError(f"question {qid} has no annotation in {annotations_path}")
        out.append(Question(qid, str(image_id), text, answers[qid]))
    if not out:
        raise InputError(f"{questions_path} holds no questions")
    return out

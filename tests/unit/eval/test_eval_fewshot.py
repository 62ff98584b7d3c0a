"""Few-shot prompt layouts: segments, image slots, labels and left padding (word-level tokens)."""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from frozen_scale.data.prompts import IGNORE, IMAGE_TOKEN, Image, Text, encode, pad_batch
from frozen_scale.eval.fewshot import (
    concept_binding,
    nshot_vqa,
    open_ended_classification,
    task_induction_text,
)
from frozen_scale.eval.names import NONSENSE_NAMES, assign_nonsense_names
from frozen_scale.world.text import question_prompt

K = 2
WORDS = ["<eos>", "<pad>", "<unk>", "Answer", "with", "or", "This", "is", "a", "dax", "blicket",
         ".", "Q", ":", "What", "this", "?", "A", "color", "the", "red", "Question", "shape"]


@pytest.fixture(scope="module")
def tokenizer():
    # Whitespace pre-tokenizer: words and punctuation runs are separate tokens ("dax." -> dax .).
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<eos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def two_way_one_shot(task_induction=True):
    support = [("img_dax", "dax"), ("img_blicket", "blicket")]
    return open_ended_classification(support, "img_query", "dax", task_induction=task_induction)


def test_two_way_one_shot_segments():
    prompt = two_way_one_shot()
    assert list(prompt.segments) == [
        Text("Answer with dax or blicket."),
        Image(), Text("This is a dax."),
        Image(), Text("This is a blicket."),
        Image(), Text("Q: What is this? A: This is a"),
    ]
    assert prompt.images == ("img_dax", "img_blicket", "img_query")
    assert prompt.answer == "dax"
    assert prompt.with_target()[-1] == Text(" dax", target=True)


def test_two_way_one_shot_token_layout(tokenizer):
    enc = encode(two_way_one_shot().with_target(), tokenizer, k=K)
    # 0 bos | 1-6 "Answer with dax or blicket ." | 7-8 image | 9-13 "This is a dax ." |
    # 14-15 image | 16-20 "This is a blicket ." | 21-22 image |
    # 23-33 "Q : What is this ? A : This is a" | 34 "dax" (target) | 35 eos (target)
    image_positions = [i for i, t in enumerate(enc.input_ids) if t == IMAGE_TOKEN]
    assert image_positions == [7, 8, 14, 15, 21, 22]
    assert enc.num_images == 3
    assert len(enc.input_ids) == 36
    assert "<unk>" not in tokenizer.convert_ids_to_tokens(
        [t for t in enc.input_ids if t != IMAGE_TOKEN])
    dax, eos = tokenizer.convert_tokens_to_ids(["dax", "<eos>"])
    assert enc.input_ids[9:14] == tokenizer.convert_tokens_to_ids(["This", "is", "a", "dax", "."])
    assert enc.input_ids[34:] == [dax, eos]
    assert enc.labels[34:] == [dax, eos]
    assert enc.labels[:34] == [IGNORE] * 34


def test_left_padding_masks_exactly_the_padding(tokenizer):
    long = encode(two_way_one_shot(task_induction=True).segments, tokenizer, k=K)
    short = encode(two_way_one_shot(task_induction=False).segments, tokenizer, k=K)
    assert len(long.input_ids) - len(short.input_ids) == 6  # the task induction's tokens
    batch = pad_batch([long, short], pad_id=tokenizer.pad_token_id, left=True)
    width = len(long.input_ids)
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"][0].tolist() == [1] * width
    assert batch["attention_mask"][1].tolist() == [0] * 6 + [1] * (width - 6)
    assert batch["input_ids"][1, :6].tolist() == [tokenizer.pad_token_id] * 6
    assert batch["input_ids"][1, 6:].tolist() == short.input_ids
    # both prompts end at the last column, where generation continues
    assert torch.equal(batch["input_ids"][:, -1], torch.tensor([long.input_ids[-1]] * 2))
    assert (batch["labels"] == IGNORE).all()


def test_inner_shots_and_repeats():
    support = [("d1", "dax"), ("b1", "blicket"), ("d2", "dax"), ("b2", "blicket")]
    prompt = open_ended_classification(support, "q", "blicket", repeats=2)
    assert sum(isinstance(s, Image) for s in prompt.segments) == 4 * 3 + 1
    assert prompt.images == ("d1", "b1", "d2", "b2") * 3 + ("q",)
    assert prompt.segments[0] == Image()  # no task induction by default
    with pytest.raises(ValueError, match="not among the support names"):
        open_ended_classification(support, "q", "wug")
    with pytest.raises(ValueError, match="repeats"):
        open_ended_classification(support, "q", "dax", repeats=-1)


def test_task_induction_text():
    assert task_induction_text(["dax", "blicket", "dax"]) == "Answer with dax or blicket."
    assert task_induction_text(["dax", "blicket", "slation"]) == \
        "Answer with dax, blicket or slation."
    with pytest.raises(ValueError):
        task_induction_text(["dax", "dax"])


def test_concept_binding_with_assigned_names(tokenizer):
    names = assign_nonsense_names(["red circle", "blue square", "red circle"],
                                  rng=np.random.default_rng(0))
    assert set(names) == {"red circle", "blue square"}
    assert len(set(names.values())) == 2 and set(names.values()) <= set(NONSENSE_NAMES)
    assert assign_nonsense_names(["x", "y"]) == {"x": "dax", "y": "blicket"}
    with pytest.raises(ValueError):
        assign_nonsense_names([str(i) for i in range(len(NONSENSE_NAMES) + 1)])

    prompt = concept_binding([("i1", "dax"), ("i2", "blicket")], "q",
                             "Q: What color is the dax? A:", "red",
                             task_induction="Answer with a color.")
    assert list(prompt.segments) == [
        Text("Answer with a color."),
        Image(), Text("This is a dax."), Image(), Text("This is a blicket."),
        Image(), Text("Q: What color is the dax? A:"),
    ]
    enc = encode(prompt.with_target(), tokenizer, k=K)
    red = tokenizer.convert_tokens_to_ids("red")
    assert [t for t in enc.labels if t != IGNORE] == [red, tokenizer.eos_token_id]


def test_nshot_vqa_paper_format(tokenizer):
    shots = [("i1", "What color is this?", "red"), ("i2", "What shape is this?", "dax")]
    prompt = nshot_vqa(shots, "q", "What color is the dax?", "red")
    assert list(prompt.segments) == [
        Image(), Text("Question: What color is this? Answer:"), Text(" red"),
        Image(), Text("Question: What shape is this? Answer:"), Text(" dax"),
        Image(), Text("Question: What color is the dax? Answer:"),
    ]
    assert prompt.images == ("i1", "i2", "q")
    enc = encode(prompt.segments, tokenizer, k=K)
    assert enc.num_images == 3 and all(label == IGNORE for label in enc.labels)
    # zero-shot: just the query
    zero = nshot_vqa([], "q", "What color is this?")
    assert list(zero.segments) == [Image(), Text("Question: What color is this? Answer:")]


def test_nshot_vqa_with_the_worlds_format():
    prompt = nshot_vqa([("i1", "what color is the circle ?", "red")], "q",
                       "what shape is the red object ?", "circle",
                       format_question=question_prompt, format_answer=lambda a: f" {a} .")
    assert list(prompt.segments) == [
        Image(), Text("question : what color is the circle ? answer :"), Text(" red ."),
        Image(), Text("question : what shape is the red object ? answer :"),
    ]
    assert prompt.answer == "circle" and prompt.target_text == " circle ."


"""Few-shot prompts of the Frozen paper as segment lists for `frozen_scale.data.prompts.encode`.

Three layouts (Tsimpoukelli et al., 2021, section 4):

- open-ended n-way k-shot classification (miniImageNet style): an optional task induction
  ("Answer with dax or blicket."), then support pairs [image, "This is a dax."], then the query
  [image, "Q: What is this? A: This is a"], to be continued with " dax";
- fast concept binding: the same support layout with nonsense names bound to categories inside
  the episode, then a question about the query image that uses a bound name
  ("Q: What color is the dax? A:");
- n-shot VQA: [image, "Question: {q} Answer:", " {a}"] * n, then [image, "Question: {q} Answer:"].

Every builder returns a `FewShotPrompt`: the prompt segments (ending where the model should go
on), the images in slot order, and the expected answer. Segments are tokenized one by one, so the
text that continues a previous segment carries its own leading space (" dax"). The nonsense
names, and binding an episode's categories to them, are `frozen_scale.eval.names`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from frozen_scale.data.prompts import Image, Text

CAPTION_TEMPLATE = "This is a {name}."
CLASSIFICATION_QUESTION = "Q: What is this? A: This is a"


@dataclass(frozen=True)
class FewShotPrompt:
    segments: tuple
    """Image()/Text() segments of the prompt, up to where the answer should follow."""
    images: tuple
    """The image objects, in the order of the Image() slots of `segments`."""
    answer: str
    """The expected answer, bare ("dax"), to compare with what the model generates."""
    target_text: str
    """How the answer is written after the prompt (" dax"): the text scored as the target."""

    def with_target(self) -> list:
        """The segments followed by the answer as a target, for scoring by log-likelihood."""
        return [*self.segments, Text(self.target_text, target=True)]


def task_induction_text(names: Sequence[str]) -> str:
    """The paper's task induction: 'Answer with dax or blicket.' ('a, b or c' for more)."""
    names = list(dict.fromkeys(names))
    if len(names) < 2:
        raise ValueError(f"task induction needs at least two distinct names, got {names}")
    return f"Answer with {', '.join(names[:-1])} or {names[-1]}."


def concept_binding(support: Sequence[tuple[Any, str]], query_image: Any, query_text: str,
                    answer: str, *, task_induction: bool | str = False, repeats: int = 0,
                    caption_template: str = CAPTION_TEMPLATE) -> FewShotPrompt:
    """Generic few-shot binding prompt: captioned support images, then a question on a query.

    support: (image, name) pairs in presentation order; several pairs per name are the inner
      shots. repeats: how many more times the whole support sequence is shown (0: once).
    task_induction: False for none, True for `task_induction_text` of the support names, or a
      string to put first verbatim.
    The answer is written after query_text with a leading space (" {answer}").
    """
    if not support:
        raise ValueError("support must hold at least one (image, name) pair")
    if repeats < 0:
        raise ValueError(f"repeats must be >= 0, got {repeats}")
    segments: list = []
    if task_induction is True:
        segments.append(Text(task_induction_text([name for _, name in support])))
    elif isinstance(task_induction, str) and task_induction:
        segments.append(Text(task_induction))
    images: list = []
    for _ in range(repeats + 1):
        for image, name in support:
            segments += [Image(), Text(caption_template.format(name=name))]
            images.append(image)
    segments += [Image(), Text(query_text)]
    images.append(query_image)
    return FewShotPrompt(tuple(segments), tuple(images), answer, f" {answer}")


def open_ended_classification(support: Sequence[tuple[Any, str]], query_image: Any,
                              query_name: str, *, task_induction: bool | str = False,
                              repeats: int = 0, caption_template: str = CAPTION_TEMPLATE,
                              question: str = CLASSIFICATION_QUESTION) -> FewShotPrompt:
    """Open-ended n-way k-shot classification in the paper's wording.

    The n ways are the distinct names in `support`, k (inner shots) the pairs per name; the
    expected answer is the query's name, which must be one of them.
    """
    names = {name for _, name in support}
    if query_name not in names:
        raise ValueError(
            f"query name {query_name!r} is not among the support names {sorted(names)}")
    return concept_binding(support, query_image, question, query_name,
                           task_induction=task_induction, repeats=repeats,
                           caption_template=caption_template)


def paper_vqa_question(question: str) -> str:
    return f"Question: {question} Answer:"


def paper_vqa_answer(answer: str) -> str:
    return f" {answer}"


def nshot_vqa(shots: Sequence[tuple[Any, str, str]], query_image: Any, query_question: str,
              query_answer: str = "", *,
              format_question: Callable[[str], str] = paper_vqa_question,
              format_answer: Callable[[str], str] = paper_vqa_answer) -> FewShotPrompt:
    """n-shot VQA: (image, question, answer) shots interleaved, then the query image and question.

    format_question / format_answer write a question and an answer as text; the defaults are the
    paper's "Question: {q} Answer:" and " {a}" (the built-in world passes its own, e.g.
    `world.text.question_prompt`). No shots gives the zero-shot prompt. query_answer may be
    empty when only generation is wanted.
    """
    segments: list = []
    images: list = []
    for image, question, answer in shots:
        segments += [Image(), Text(format_question(question)), Text(format_answer(answer))]
        images.append(image)
    segments += [Image(), Text(format_question(query_question))]
    images.append(query_image)
    return FewShotPrompt(tuple(segments), tuple(images), query_answer, format_answer(query_answer))

"""Multiple-choice scoring on a public benchmark the user has on disk (MMStar, MMBench, MathVista).

Reads a Hugging Face ``datasets`` folder (``save_to_disk``) or parquet file(s). Recognised
columns, whichever the set uses:

* image: the first ``datasets.Image`` column (MMStar ``image``, MathVista ``decoded_image``);
* question: ``question`` (plus ``hint`` when present, as MMBench has);
* options: a list column ``options`` / ``choices`` (MathVista), or letter columns ``A``..``F``
  (MMBench), or none (MMStar writes them into the question);
* answer: a letter, or the option's text (mapped to its letter).

The reply's answer is taken by the one thinking parser (boxed answer, else the answer part),
then the first standalone option letter in it is the prediction.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.local_datasets import first_image_column, load_rows
from glm4v_edge.media import to_rgb
from glm4v_edge.messages import user_message
from glm4v_edge.runtime.variant import MeasurableVariant, Sampling, collect

LETTERS = string.ascii_uppercase[:6]
OPTION_LISTS = ("options", "choices")
INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Question:
    image: object
    prompt: str
    options: list[str]  # empty when the question carries them inline (MMStar)
    answer: str  # a letter
    category: str


def questions(path: Path, limit: int | None = None) -> list[Question]:
    data = load_rows(path)
    features = data.features
    image_column = first_image_column(data)
    if image_column is None or "question" not in features or "answer" not in features:
        raise Glm4vEdgeError(f"{path} needs an image column, 'question' and 'answer'; it has: {', '.join(features)}")
    result = []
    for index in range(len(data) if limit is None else min(limit, len(data))):
        row = data[index]
        options = next((list(row[c]) for c in OPTION_LISTS if c in features and row[c]), None)
        if options is None:
            options = [row[letter] for letter in LETTERS if letter in features and row[letter] not in (None, "")]
        if row.get("question_type") == "free_form":
            continue  # MathVista's free-form half is not multiple choice
        question = str(row["question"])
        if row.get("hint"):
            question = f"Hint: {row['hint']}\n{question}"
        if options:
            question += "\nOptions:\n" + "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))
        answer = str(row["answer"]).strip()
        if answer not in LETTERS and answer in map(str, options):
            answer = LETTERS[list(map(str, options)).index(answer)]
        result.append(Question(to_rgb(row[image_column]), f"{question}\n{INSTRUCTION}", list(map(str, options)), answer,
                               str(row.get("category") or row.get("task") or "all")))
    return result


def predicted_letter(answer_text: str, options: list[str]) -> str | None:
    """The option letter a reply chose: a bare letter ("B", "(B)", "B. ..."), else the one option
    whose text the reply contains (as VLMEvalKit does), else the first standalone letter."""
    text = answer_text.strip()
    bare = re.match(r"^\(?([A-F])\)?(?:[.:)\s]|$)", text)
    if bare:
        return bare.group(1)
    named = [LETTERS[i] for i, option in enumerate(options) if option and option.lower() in text.lower()]
    if len(named) == 1:
        return named[0]
    match = re.search(r"(?<![A-Za-z])([A-F])(?![A-Za-z])", text)
    return match.group(1) if match else None


def score(variant: MeasurableVariant, path: Path, *, limit: int | None, max_new_tokens: int) -> dict:
    per_category: dict[str, list[int]] = {}
    for question in questions(path, limit):
        result = collect(variant.generate([user_message(question.prompt, images=[question.image])],
                                          max_new_tokens=max_new_tokens, sampling=Sampling.greedy()))
        correct = predicted_letter(result.reply.final_answer, question.options) == question.answer
        per_category.setdefault(question.category, []).append(int(correct))
    total = [c for scores in per_category.values() for c in scores]
    return {
        "dataset": str(path),
        "questions": len(total),
        "accuracy": sum(total) / len(total) if total else float("nan"),
        "per_category": {k: {"correct": sum(v), "total": len(v)} for k, v in sorted(per_category.items())},
    }

"""A training example's prompt (its task's, from `pengi_search.prompts`) and how its answer is written."""

from __future__ import annotations

from collections.abc import Sequence

from pengi_search.errors import UsageError
from pengi_search.prompts import TASK_PROMPTS

# Tasks whose answer may be a list of labels; the model sees them joined as "dog, rain".
LIST_ANSWER_TASKS: frozenset[str] = frozenset({"sound_event"})
ANSWER_JOINER = ", "


class TemplateError(UsageError):
    """A task, question or answer that no template accepts."""


def needs_question(task: str) -> bool:
    """Whether the task's prompt is built from a question."""
    return "{question}" in _template(task)


def render_prompt(task: str, question: str | None = None) -> str:
    """The prompt for `task`; `question` is required by (and only accepted by) question tasks."""
    question = question.strip() if question is not None else None
    if needs_question(task):
        if not question:
            raise TemplateError("", f"task {task!r} needs a question")
        return _template(task).format(question=question)
    if question:
        raise TemplateError("", f"task {task!r} takes no question")
    return _template(task)


def render_answer(task: str | None, answer: str | Sequence[str]) -> str:
    """The answer text; a list of labels (sound events only) is comma-joined. `task` None: a free prompt."""
    if isinstance(answer, str):
        labels = [answer.strip()]
    elif task in LIST_ANSWER_TASKS:
        labels = [_label(item) for item in answer]
    else:
        allowed = ", ".join(sorted(LIST_ANSWER_TASKS))
        raise TemplateError("", f"a list answer is only accepted for task {allowed}, not {task!r}")
    if not any(labels):
        raise TemplateError("", "empty answer")
    if not all(labels):
        raise TemplateError("", f"answer list {list(answer)!r} has an empty label")
    return ANSWER_JOINER.join(labels)


def _label(item: object) -> str:
    if not isinstance(item, str):
        raise TemplateError("", f"answer labels must be strings, got {item!r}")
    return item.strip()


def _template(task: str) -> str:
    try:
        return TASK_PROMPTS[task]
    except (KeyError, TypeError):
        raise TemplateError("", f"unknown task {task!r}; known tasks: {', '.join(TASK_PROMPTS)}") from None

"""Pengi's task prompts (paper, Tables 1 and 11): the one table of task name -> prompt.

Inference, classification, the indexer, the trainer and the CLI all read their prompts here. The task names are
those that training manifests write in their `task` column, so they are part of the training data's format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import UsageError

# Task name -> prompt. The question-answering prompt has a `{question}` field (see `question_prompt`).
TASK_PROMPTS: dict[str, str] = {
    "caption": "generate audio caption",
    "qa": "question: {question}",
    "sound_event": "this is a sound of",
    "acoustic_scene": "this acoustic scene is",
    "emotion": "this emotion is",
    "sentiment": "this sentiment is",
    "music_analysis": "music analysis",
    "music_note": "this music note is",
    "metadata": "generate metadata",
}

# The tasks that `describe` answers by default, as the reference's describe does.
DESCRIBE_TASKS: tuple[str, ...] = ("caption", "metadata", "sound_event")


def describe_tasks(trained: Sequence[str] | None = None) -> tuple[str, ...]:
    """What `describe` asks a model by default: the reference's three tasks, or, for a model trained on named tasks
    (`ModelDir.trained_tasks`), those of them that have a prompt of their own, so that it is not asked what it
    never learnt ("generate metadata" of a model trained on labels). `DESCRIBE_TASKS` order first."""
    own = [task for task in dict.fromkeys(trained or ()) if task in TASK_PROMPTS and task != "qa"]
    order = {task: rank for rank, task in enumerate(DESCRIBE_TASKS)}
    return tuple(sorted(own, key=lambda task: order.get(task, len(order)))) or DESCRIBE_TASKS


def describe_prompts(trained: Sequence[str] | None = None) -> dict[str, str]:
    """Task name -> prompt of what `describe` asks by default (`describe_tasks`): the names are its answers' keys."""
    return {task: TASK_PROMPTS[task] for task in describe_tasks(trained)}


def named_prompts(prompts: str | Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """Name -> prompt: a mapping as given, or prompts each named by itself (as `describe -p` names them); a string
    is one prompt (it is a sequence too, whose letters would each be asked)."""
    if isinstance(prompts, Mapping):
        return dict(prompts)
    listed = [prompts] if isinstance(prompts, str) else prompts
    return {prompt: prompt for prompt in listed}


def question_prompt(question: str) -> str:
    """The question-answering prompt for `question` (surrounding spaces trimmed)."""
    return TASK_PROMPTS["qa"].format(question=question.strip())


def ask_prompts(question: str) -> dict[str, str]:
    """What `ask` asks: the question's prompt, its answer named "answer"; an empty question is bad usage."""
    if not question.strip():
        raise UsageError("", 'the question is empty; ask something about the sound, e.g. "is there speech?"')
    return {"answer": question_prompt(question)}

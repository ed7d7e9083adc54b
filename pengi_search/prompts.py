"""Pengi's task prompts (paper, Tables 1 and 11): the one table of task name -> prompt.

Inference, classification, the indexer, the trainer and the CLI all read their prompts here. The task names are
those that training manifests write in their `task` column, so they are part of the training data's format.
"""

from __future__ import annotations

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


def question_prompt(question: str) -> str:
    """The question-answering prompt for `question` (surrounding spaces trimmed)."""
    return TASK_PROMPTS["qa"].format(question=question.strip())

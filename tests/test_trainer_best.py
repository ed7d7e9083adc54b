"""Which evaluation of a run is its best model (`trainer.stopping.BestTracker`): the better metric; on a tie in it
the lower validation loss; on a tie in both the earlier step. Each case is a run's sequence of evaluations."""

from __future__ import annotations

import pytest

from pengi_search.ties import TIE_TOLERANCE
from trainer.stopping import BestTracker


def evaluated(tracker: BestTracker, evaluations: list[tuple[int, float, float | None]]) -> list[bool]:
    """`tracker` told each (step, metric value, validation loss) in turn; whether each became the best."""
    return [tracker.update(step, value, loss) for step, value, loss in evaluations]


def test_a_flat_accuracy_keeps_the_evaluation_with_the_lowest_validation_loss_not_the_earliest():
    tracker = BestTracker("accuracy")
    improved = evaluated(tracker, [(10, 0.0, 3.2), (20, 0.0, 2.5), (30, 0.0, 2.9), (40, 0.0, 1.7)])
    assert improved == [True, True, False, True]
    assert (tracker.best, tracker.best_step, tracker.best_loss) == (0.0, 40, 1.7)
    assert tracker.rule == "lower val_loss (accuracy tied with steps 10, 20, 30)"
    assert tracker.since_best == 0  # a lower loss on a tied accuracy is progress: patience starts over


def test_a_better_metric_wins_whatever_its_loss_and_the_ties_before_it_no_longer_count():
    tracker = BestTracker("accuracy")
    evaluated(tracker, [(10, 0.25, 2.0), (20, 0.25, 1.5), (30, 0.5, 2.4)])
    assert (tracker.best, tracker.best_step) == (0.5, 30)
    assert tracker.rule == "accuracy"


def test_a_tied_metric_with_a_higher_loss_keeps_the_earlier_best_and_counts_against_patience():
    tracker = BestTracker("accuracy", patience=2)
    assert evaluated(tracker, [(10, 0.5, 1.0), (20, 0.5, 1.4), (30, 0.25, 0.8)]) == [True, False, False]
    assert tracker.best_step == 10 and tracker.exhausted
    assert tracker.rule == "lower val_loss (accuracy tied with step 20)"


def test_a_tie_in_metric_and_loss_keeps_the_earlier_step():
    tracker = BestTracker("accuracy", patience=1)
    assert evaluated(tracker, [(10, 0.0, 2.0), (20, 0.0, 2.0 + TIE_TOLERANCE / 2)]) == [True, False]
    assert tracker.best_step == 10 and tracker.exhausted  # nothing better in any way: not a reason to wait longer
    assert tracker.rule == "earlier step (accuracy and val_loss tied with step 20)"


def test_metric_values_within_the_tie_tolerance_tie():
    tracker = BestTracker("loglik_accuracy")
    evaluated(tracker, [(10, 0.5, 2.0), (20, 0.5 + TIE_TOLERANCE / 2, 2.5)])
    assert tracker.best_step == 10  # not better by a float's rounding: the loss decides


def test_an_unknown_loss_breaks_no_tie():
    tracker = BestTracker("accuracy")
    assert evaluated(tracker, [(10, 0.0, None), (20, 0.0, 1.0)]) == [True, False]
    assert tracker.best_step == 10


def test_the_validation_loss_as_the_metric_is_lower_is_better_with_no_tie_to_break():
    tracker = BestTracker("val_loss")
    assert evaluated(tracker, [(10, 2.0, 2.0), (20, 1.5, 1.5), (30, 1.8, 1.8)]) == [True, True, False]
    assert tracker.best_step == 20 and tracker.rule == "val_loss"


def test_a_resumed_run_breaks_ties_as_the_uninterrupted_run_would():
    evaluations = [(10, 0.0, 3.0), (20, 0.0, 2.0), (30, 0.0, 2.5), (40, 0.0, 1.0)]
    whole = BestTracker("accuracy")
    evaluated(whole, evaluations)
    before = BestTracker("accuracy")
    evaluated(before, evaluations[:3])
    resumed = BestTracker("accuracy")
    resumed.restore(before.state())  # as a checkpoint keeps it
    evaluated(resumed, evaluations[3:])
    assert resumed.state() == whole.state()
    assert whole.state() == {
        "best": 0.0,
        "best_step": 40,
        "best_val_loss": 1.0,
        "tied": [[10, 3.0], [20, 2.0], [30, 2.5]],
        "rule": "lower val_loss (accuracy tied with steps 10, 20, 30)",
        "since_best": 0,
    }


@pytest.mark.parametrize("loss", [0.5, 5.0])
def test_a_checkpoint_of_an_earlier_version_without_the_loss_keeps_its_best_on_a_tie(loss):
    tracker = BestTracker("accuracy")
    tracker.restore({"best": 0.25, "best_step": 10, "since_best": 0})
    assert not tracker.update(20, 0.25, loss)
    assert tracker.best_step == 10 and tracker.since_best == 1

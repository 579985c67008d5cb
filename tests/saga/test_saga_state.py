"""The pure saga state machine: events in, state and next command out."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.saga.codec import state_from_json, state_to_json
from interlink.saga.errors import CorruptSagaState
from interlink.saga.state import (
    ActionFailed,
    ActionSucceeded,
    CompensationFailed,
    CompensationSucceeded,
    Park,
    RunAction,
    RunCompensation,
    SagaShape,
    SagaState,
    SagaStatus,
    Sleep,
    StepShape,
    StepStatus,
    Stop,
    Wake,
    decide,
    idempotency_key,
    new_state,
    resume,
)

SHAPE = SagaShape(
    (StepShape("order"), StepShape("pay"), StepShape("notify", has_compensation=False)),
    max_interruptions=2,
)


def fresh(timeout: float | None = None) -> SagaState:
    return new_state("s1", "demo", SHAPE, {"x": 1}, at=0.0, timeout=timeout)


def test_new_saga_runs_its_first_step() -> None:
    """Waking a new saga starts attempt 1 of step 0 under the saga-and-step key."""
    d = decide(fresh(), Wake(1.0), SHAPE)
    assert d.command == RunAction(0, 1, "s1:order")
    assert d.state.steps[0].status is StepStatus.RUNNING
    assert d.state.steps[0].in_flight
    assert d.state.steps[0].started_at == 1.0


def test_successes_complete_the_saga() -> None:
    """Each success runs the next step; the last one completes the saga."""
    d = decide(fresh(), Wake(1.0), SHAPE)
    for index in range(3):
        d = decide(d.state, ActionSucceeded(index, 2.0 + index, {"n": index}), SHAPE)
    assert d.command == Stop(SagaStatus.COMPLETED)
    assert d.state.status is SagaStatus.COMPLETED
    assert d.state.results == {"order": {"n": 0}, "pay": {"n": 1}, "notify": {"n": 2}}


def test_failure_with_a_delay_waits_then_retries_same_key() -> None:
    """A retryable failure sleeps until its delay is over, then runs attempt 2, same key."""
    d = decide(fresh(), Wake(1.0), SHAPE)
    d = decide(d.state, ActionFailed(0, 2.0, "boom", retry_in=0.5), SHAPE)
    assert d.command == Sleep(2.5)
    assert d.state.steps[0].error == "boom"
    assert decide(d.state, Wake(2.4), SHAPE).command == Sleep(2.5)
    d = decide(d.state, Wake(2.5), SHAPE)
    assert d.command == RunAction(0, 2, "s1:order")
    assert d.state.steps[0].failures == 1


def test_giving_up_compensates_started_steps_in_reverse() -> None:
    """A step that gives up is undone first (it may have half happened), then the earlier ones."""
    d = decide(fresh(), Wake(1.0), SHAPE)
    d = decide(d.state, ActionSucceeded(0, 2.0), SHAPE)
    d = decide(d.state, ActionFailed(1, 3.0, "declined"), SHAPE)
    assert d.state.status is SagaStatus.COMPENSATING
    assert "step 'pay' failed after 1 attempt(s): declined" in (d.state.error or "")
    assert d.command == RunCompensation(1, 1, "s1:pay:compensation")
    d = decide(d.state, CompensationSucceeded(1, 4.0), SHAPE)
    assert d.command == RunCompensation(0, 1, "s1:order:compensation")
    d = decide(d.state, CompensationSucceeded(0, 5.0), SHAPE)
    assert d.command == Stop(SagaStatus.COMPENSATED)
    assert [s.status for s in d.state.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.PENDING,
    ]


def test_failed_step_is_not_undone_when_told_so() -> None:
    """compensate_on_failure=False: a failed step's compensation does not run."""
    shape = SagaShape((StepShape("a"), StepShape("b", compensate_on_failure=False)))
    state = new_state("s", "x", shape, None, at=0.0)
    d = decide(state, Wake(0.0), shape)
    d = decide(d.state, ActionSucceeded(0, 1.0), shape)
    d = decide(d.state, ActionFailed(1, 2.0, "no"), shape)
    assert d.command == RunCompensation(0, 1, "s:a:compensation")


def test_steps_without_compensation_are_skipped() -> None:
    """A succeeded step with nothing to undo stays SUCCEEDED while the saga compensates."""
    shape = SagaShape((StepShape("a"), StepShape("b", has_compensation=False), StepShape("c")))
    d = decide(new_state("s", "x", shape, None, at=0.0), Wake(0.0), shape)
    d = decide(d.state, ActionSucceeded(0, 1.0), shape)
    d = decide(d.state, ActionSucceeded(1, 1.0), shape)
    d = decide(d.state, ActionFailed(2, 2.0, "no"), shape)
    d = decide(d.state, CompensationSucceeded(2, 3.0), shape)
    assert d.command == RunCompensation(0, 1, "s:a:compensation")
    assert d.state.steps[1].status is StepStatus.SUCCEEDED


def test_compensation_that_gives_up_parks_the_saga() -> None:
    """A compensation whose Retry gives up parks the saga in NEEDS_ATTENTION with the reason."""
    d = decide(fresh(), Wake(1.0), SHAPE)
    d = decide(d.state, ActionFailed(0, 2.0, "no"), SHAPE)
    d = decide(d.state, CompensationFailed(0, 3.0, "db down", retry_in=1.0), SHAPE)
    assert d.command == Sleep(4.0)
    d = decide(d.state, Wake(4.0), SHAPE)
    assert d.command == RunCompensation(0, 2, "s1:order:compensation")
    d = decide(d.state, CompensationFailed(0, 5.0, "db down"), SHAPE)
    assert d.command == Stop(SagaStatus.NEEDS_ATTENTION)
    assert d.state.parked_from is SagaStatus.COMPENSATING
    assert d.state.error == "compensation of step 'order' failed 2 time(s): db down"


def test_resume_continues_where_the_saga_was_parked() -> None:
    """Resuming restores the parked status with a fresh failure count and runs again."""
    d = decide(fresh(), Wake(1.0), SHAPE)
    d = decide(d.state, ActionFailed(0, 2.0, "no"), SHAPE)
    d = decide(d.state, CompensationFailed(0, 3.0, "db down"), SHAPE)
    state = resume(d.state, 10.0)
    assert state.status is SagaStatus.COMPENSATING
    assert state.steps[0].failures == 0
    d = decide(state, Wake(10.0), SHAPE)
    assert d.command == RunCompensation(0, 2, "s1:order:compensation")


def test_resume_refuses_finished_sagas() -> None:
    """A completed saga cannot be resumed; the message says why."""
    done = replace(fresh(), status=SagaStatus.COMPLETED)
    with pytest.raises(ValueError, match="'s1' is COMPLETED; there is nothing to resume"):
        resume(done, 1.0)


def test_crash_mid_attempt_reruns_it_with_the_same_key() -> None:
    """An attempt still in flight on wake-up (the process died) runs again, same key."""
    d = decide(fresh(), Wake(1.0), SHAPE)
    d = decide(d.state, Wake(2.0), SHAPE)
    assert d.command == RunAction(0, 2, "s1:order")
    assert d.state.steps[0].interruptions == 1


def test_too_many_interruptions_park_the_saga() -> None:
    """A step that keeps being interrupted is parked instead of crash-looping."""
    d = decide(fresh(), Wake(1.0), SHAPE)
    for at in (2.0, 3.0):
        d = decide(d.state, Wake(at), SHAPE)
    d = decide(d.state, Wake(4.0), SHAPE)
    assert d.command == Stop(SagaStatus.NEEDS_ATTENTION)
    assert "interrupted 3 times" in (d.state.error or "")


def test_saga_timeout_compensates() -> None:
    """Past the saga's deadline a failing step is not retried: the saga compensates."""
    d = decide(fresh(timeout=5.0), Wake(1.0), SHAPE)
    d = decide(d.state, ActionFailed(0, 6.0, "slow", retry_in=0.1), SHAPE)
    assert d.state.status is SagaStatus.COMPENSATING
    assert d.command == RunCompensation(0, 1, "s1:order:compensation")


def test_saga_timeout_on_wake_compensates() -> None:
    """Waking after the deadline (during a backoff) switches to compensation."""
    d = decide(fresh(timeout=5.0), Wake(1.0), SHAPE)
    d = decide(d.state, ActionFailed(0, 2.0, "slow", retry_in=10.0), SHAPE)
    d = decide(d.state, Wake(6.0), SHAPE)
    assert d.state.error == "the saga timed out"
    assert d.command == RunCompensation(0, 1, "s1:order:compensation")


def test_park_event_parks_an_active_saga() -> None:
    """Bad input parks the saga with the reason and where it was."""
    d = decide(fresh(), Park(1.0, "data no longer validates"), SHAPE)
    assert d.command == Stop(SagaStatus.NEEDS_ATTENTION)
    assert d.state.parked_from is SagaStatus.RUNNING
    assert d.state.error == "data no longer validates"


def test_result_for_an_idle_step_is_refused() -> None:
    """An event that does not fit the state is a driver bug: ValueError naming the step."""
    with pytest.raises(ValueError, match="action result for step 'order', which is PENDING"):
        decide(fresh(), ActionSucceeded(0, 1.0), SHAPE)


def test_negative_retry_delay_is_refused() -> None:
    """retry_in must be a finite number >= 0."""
    d = decide(fresh(), Wake(1.0), SHAPE)
    with pytest.raises(ValueError, match="'retry_in' must be a finite number >= 0: -1"):
        decide(d.state, ActionFailed(0, 2.0, "x", retry_in=-1), SHAPE)


def test_definition_changed_under_a_stored_saga_parks_it() -> None:
    """Steps that no longer match the definition park the saga instead of guessing."""
    other = SagaShape((StepShape("order"), StepShape("ship")))
    d = decide(fresh(), Wake(1.0), other)
    assert d.command == Stop(SagaStatus.NEEDS_ATTENTION)
    assert "no longer match its definition" in (d.state.error or "")


def test_idempotency_keys_differ_per_phase() -> None:
    """Action and compensation of one step deduplicate separately."""
    assert idempotency_key("s", "pay") == "s:pay"
    assert idempotency_key("s", "pay", compensation=True) == "s:pay:compensation"


# -- codec --------------------------------------------------------------------------------------


def test_state_survives_the_json_round_trip() -> None:
    """What is stored reads back equal (the version comes from its column)."""
    d = decide(fresh(timeout=9.0), Wake(1.0), SHAPE)
    d = decide(d.state, ActionFailed(0, 2.0, "boom", retry_in=0.25), SHAPE)
    back = state_from_json("s1", state_to_json(d.state), version=7)
    assert back == replace(d.state, version=7)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"saga_id": "s1"}', "missing field 'steps'"),
        (
            '{"saga_id":"s1","name":"x","status":"LOST","steps":[],"created_at":0,"updated_at":0}',
            "'LOST' is not a valid SagaStatus",
        ),
        (
            '{"saga_id":"s1","name":"x","status":"RUNNING","steps":[{"name":"a","color":1}],'
            '"created_at":0,"updated_at":0}',
            "unknown step field(s) ['color']",
        ),
    ],
)
def test_corrupt_state_is_reported_clearly(text: str, problem: str) -> None:
    """CorruptSagaState names the saga and what is wrong with its row."""
    with pytest.raises(CorruptSagaState) as info:
        state_from_json("s1", text)
    assert str(info.value).startswith("stored state of saga 's1' is corrupt: ")
    assert problem in str(info.value)


# -- properties ---------------------------------------------------------------------------------

OUTCOMES = st.lists(st.sampled_from(["ok", "retry", "give_up", "crash"]), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(OUTCOMES)
def test_any_run_ends_settled_with_reverse_compensation(outcomes: list[str]) -> None:
    """Whatever happens, one attempt at a time; the saga ends COMPLETED, COMPENSATED or parked;
    compensation goes in reverse and only over steps that started."""
    shape = SagaShape(tuple(StepShape(n) for n in "abcd"), max_interruptions=3)
    d = decide(new_state("p", "x", shape, None, at=0.0), Wake(0.0), shape)
    at, feed = 0.0, iter(outcomes)
    compensated: list[int] = []
    for _ in range(500):
        command = d.command
        if isinstance(command, Stop):
            break
        at += 1.0
        if isinstance(command, Sleep):
            d = decide(d.state, Wake(command.until), shape)
            continue
        assert sum(s.in_flight for s in d.state.steps) == 1
        outcome = next(feed, "ok")
        index = command.index
        if outcome == "crash":
            d = decide(d.state, Wake(at), shape)
            continue
        if isinstance(command, RunAction):
            if outcome == "ok":
                d = decide(d.state, ActionSucceeded(index, at), shape)
            else:
                d = decide(
                    d.state,
                    ActionFailed(index, at, "x", 0.5 if outcome == "retry" else None),
                    shape,
                )
        elif outcome == "ok":
            compensated.append(index)
            d = decide(d.state, CompensationSucceeded(index, at), shape)
        else:
            d = decide(
                d.state,
                CompensationFailed(index, at, "x", 0.5 if outcome == "retry" else None),
                shape,
            )
    state = d.state
    assert isinstance(d.command, Stop)
    assert not any(s.in_flight for s in state.steps)
    assert compensated == sorted(compensated, reverse=True)
    if state.status is SagaStatus.COMPLETED:
        assert all(s.status is StepStatus.SUCCEEDED for s in state.steps)
    elif state.status is SagaStatus.COMPENSATED:
        assert all(
            s.status is StepStatus.COMPENSATED if s.attempts else s.status is StepStatus.PENDING
            for s in state.steps
        )
    else:
        assert state.status is SagaStatus.NEEDS_ATTENTION
        assert state.error

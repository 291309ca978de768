"""Tests for nnunet_semisup.schedules: the schedule environment variable, ramp-up and EMA helpers."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nnunet_semisup.schedules import (
    SCHEDULE_ENV_VAR,
    Schedule,
    apply_schedule,
    ema_decay_with_warmup,
    ema_update,
    parse_schedule,
    sigmoid_rampup,
)

# --- parse_schedule --------------------------------------------------------------------------------------


def test_parse_schedule_full():
    assert parse_schedule("epochs=10,iters=20,val_iters=2") == Schedule(
        num_epochs=10, num_iterations_per_epoch=20, num_val_iterations_per_epoch=2
    )


def test_parse_schedule_subset_in_any_order_leaves_others_none():
    assert parse_schedule("val_iters=3,epochs=5") == Schedule(num_epochs=5, num_val_iterations_per_epoch=3)
    assert parse_schedule("iters=7") == Schedule(num_iterations_per_epoch=7)


@pytest.mark.parametrize("text", [None, "", "   ", " , ,"])
def test_parse_schedule_empty_or_none_means_no_override(text):
    assert parse_schedule(text) == Schedule()


def test_parse_schedule_tolerates_whitespace_around_tokens_keys_and_values():
    assert parse_schedule("  epochs = 4 ,\titers=6 , val_iters= 0 ,") == Schedule(
        num_epochs=4, num_iterations_per_epoch=6, num_val_iterations_per_epoch=0
    )


@pytest.mark.parametrize("text", ["epoch=3", "lr=0.1", "epochs", "epochs:3", "=3"])
def test_parse_schedule_bad_key_names_token_and_accepted_keys(text):
    with pytest.raises(ValueError) as excinfo:
        parse_schedule(text)
    message = str(excinfo.value)
    assert SCHEDULE_ENV_VAR in message
    assert repr(text) in message
    for key in ("epochs", "iters", "val_iters"):
        assert key in message


@pytest.mark.parametrize("text", ["epochs=ten", "iters=2.5", "val_iters=", "epochs=1e3"])
def test_parse_schedule_non_integer_value_raises(text):
    key, _, raw = text.partition("=")
    with pytest.raises(ValueError, match="must be an integer") as excinfo:
        parse_schedule(text)
    assert key in str(excinfo.value) and repr(raw) in str(excinfo.value)


@pytest.mark.parametrize("text", ["epochs=0", "epochs=-1", "iters=0", "iters=-5", "val_iters=-1"])
def test_parse_schedule_values_below_minimum_raise(text):
    key = text.partition("=")[0]
    minimum = 0 if key == "val_iters" else 1
    with pytest.raises(ValueError, match=f"{key} must be >= {minimum}"):
        parse_schedule(text)


def test_parse_schedule_minimum_values_are_accepted():
    assert parse_schedule("epochs=1,iters=1,val_iters=0,save_every=1") == Schedule(1, 1, 0, 1)


def test_parse_schedule_save_every_sets_checkpoint_cadence():
    assert parse_schedule("save_every=5") == Schedule(save_every=5)
    with pytest.raises(ValueError, match="save_every must be >= 1"):
        parse_schedule("save_every=0")


# --- apply_schedule --------------------------------------------------------------------------------------


def _dummy_trainer():
    return SimpleNamespace(num_epochs=1000, num_iterations_per_epoch=250, num_val_iterations_per_epoch=50)


def test_apply_schedule_sets_only_given_attributes_and_returns_schedule():
    trainer = _dummy_trainer()
    schedule = apply_schedule(trainer, {SCHEDULE_ENV_VAR: "epochs=3,val_iters=0"})
    assert schedule == Schedule(num_epochs=3, num_val_iterations_per_epoch=0)
    assert trainer.num_epochs == 3
    assert trainer.num_iterations_per_epoch == 250
    assert trainer.num_val_iterations_per_epoch == 0


def test_apply_schedule_without_variable_changes_nothing():
    trainer = _dummy_trainer()
    assert apply_schedule(trainer, {"unrelated": "epochs=1"}) == Schedule()
    assert vars(trainer) == vars(_dummy_trainer())


def test_apply_schedule_bad_value_raises_and_leaves_trainer_untouched():
    trainer = _dummy_trainer()
    with pytest.raises(ValueError):
        apply_schedule(trainer, {SCHEDULE_ENV_VAR: "epochs=2,iters=0"})
    assert vars(trainer) == vars(_dummy_trainer())


# --- sigmoid_rampup --------------------------------------------------------------------------------------


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5.0), rel=1e-12)
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25), rel=1e-12)
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(250, 100) == 1.0


def test_sigmoid_rampup_negative_step_is_clipped_to_start():
    assert sigmoid_rampup(-10, 100) == pytest.approx(math.exp(-5.0), rel=1e-12)


@pytest.mark.parametrize("length", [0, -3])
def test_sigmoid_rampup_without_length_is_one(length):
    assert sigmoid_rampup(0, length) == 1.0
    assert sigmoid_rampup(7, length) == 1.0


def test_sigmoid_rampup_is_monotonic():
    values = [sigmoid_rampup(t, 40) for t in range(0, 45)]
    assert all(a < b for a, b in itertools.pairwise(values[:41]))
    assert isinstance(values[0], float)


# --- ema_update ------------------------------------------------------------------------------------------


def _small_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    # make the BatchNorm buffers differ between networks
    net.train()
    net(torch.randn(8, 3) * (seed + 1))
    return net


def test_ema_update_blends_parameters_and_copies_buffers_exactly():
    teacher, student = _small_net(0), _small_net(1)
    decay = 0.75
    expected_params = [
        decay * t.detach().clone() + (1 - decay) * s.detach().clone()
        for t, s in zip(teacher.parameters(), student.parameters())
    ]
    student_buffers = [b.clone() for b in student.buffers()]
    teacher_buffers_before = [b.clone() for b in teacher.buffers()]
    student_state = {k: v.clone() for k, v in student.state_dict().items()}
    assert any(not torch.equal(a, b) for a, b in zip(student_buffers, teacher_buffers_before))

    ema_update(teacher, student, decay)

    for p, e in zip(teacher.parameters(), expected_params):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)
    for t_buf, s_buf in zip(teacher.buffers(), student_buffers):
        assert torch.equal(t_buf, s_buf)
    # the student is not modified
    for k, v in student.state_dict().items():
        assert torch.equal(v, student_state[k])


def test_ema_update_decay_extremes():
    teacher, student = _small_net(0), _small_net(1)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 1.0)
    for p, b in zip(teacher.parameters(), before):
        assert torch.equal(p.detach(), b)
    ema_update(teacher, student, 0.0)
    for p, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(p.detach(), s.detach())


def test_ema_update_does_not_track_gradients():
    teacher, student = _small_net(0), _small_net(1)
    ema_update(teacher, student, 0.5)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad_fn is None for p in teacher.parameters())


@pytest.mark.parametrize("decay", [-0.1, 1.01, 2.0])
def test_ema_update_rejects_decay_outside_unit_interval(decay):
    teacher, student = _small_net(0), _small_net(1)
    with pytest.raises(ValueError, match=str(decay)):
        ema_update(teacher, student, decay)


def test_ema_update_rejects_mismatched_structure():
    teacher = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    student = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="structure"):
        ema_update(teacher, student, 0.9)


# --- ema_decay_with_warmup -------------------------------------------------------------------------------


def test_ema_decay_with_warmup_values():
    assert ema_decay_with_warmup(0, 0.99) == 0.0
    assert ema_decay_with_warmup(1, 0.99) == pytest.approx(0.5)
    assert ema_decay_with_warmup(9, 0.99) == pytest.approx(0.9)
    assert ema_decay_with_warmup(1000, 0.99) == 0.99
    assert ema_decay_with_warmup(99, 0.99) == pytest.approx(0.99)

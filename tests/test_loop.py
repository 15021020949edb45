"""The one training loop (sslx/core/loop.py) on a toy job: stop decisions, guards, resume.

The job fits a scalar to each batch's value with SGD + momentum on a cosine
schedule, and keeps an EMA of it as its method state; steps can be made to
produce a NaN loss or an infinite method state, so every guard of the loop is
exercised without a network.
"""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sslx import errors
from sslx.core import checkpointing
from sslx.core import health
from sslx.core import loop as loop_lib
from sslx.core import mesh as mesh_lib
from sslx.core import preemption
from sslx.core.train_state import TrainState, guarded_update

TX = optax.sgd(optax.cosine_decay_schedule(0.1, 100), momentum=0.9)


def _step_fn(action: str, nan_loss_at=(), inf_state_at=()):
  nan_loss_at, inf_state_at = jnp.asarray(nan_loss_at or [-1]), jnp.asarray(inf_state_at or [-1])

  @jax.jit
  def step(state, batch):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((p["w"] - batch["x"]) ** 2))(
        state.params)
    loss = loss + jnp.where(jnp.isin(state.step, nan_loss_at), jnp.nan, 0.0)
    updates, opt_state = TX.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = 0.9 * state.method_state["ema"] + 0.1 * params["w"]
    ema = ema + jnp.where(jnp.isin(state.step, inf_state_at), jnp.inf, 0.0)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        method_state={"ema": ema})
    new, flags = guarded_update(state, new, loss, grads, action)
    return new, {"loss": loss, "grad_norm": optax.global_norm(grads), **flags}
  return step


def _batches_from(start):
  step = start
  while True:
    yield {"x": np.full((4,), float(step % 5), np.float32)}
    step += 1


def _state(mesh):
  params = {"w": jnp.zeros(())}
  return mesh_lib.replicate(TrainState.create(params=params, opt_state=TX.init(params),
                                              method_state={"ema": jnp.zeros(())}), mesh)


def _run(workdir, *, steps=6, action="stop", every=2, checkpoints=True, hooks=(), **poison):
  config = ml_collections.ConfigDict(dict(
      checkpoint_every_steps=every, log_every_steps=1, resume_from_older=False,
      nonfinite=dict(action=action, max_skipped=5)))
  mesh = mesh_lib.create_mesh(1)
  ckpt = None
  if checkpoints:
    identity = checkpointing.Identity(fingerprint={"toy": 1}, of_config=lambda c: {"toy": 1},
                                      config=ml_collections.ConfigDict({"toy": 1}))
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=10, identity=identity)
  loop = loop_lib.Loop(config=config, mesh=mesh, num_steps=steps, global_batch_size=4,
                       checkpointer=ckpt, hooks=hooks)
  return loop.run(_state(mesh), _step_fn(action, **poison), _batches_from)


def _saved_steps(workdir):
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=1, read_only=True)
  try:
    return ckpt.manager.all_steps()
  finally:
    ckpt.close()


class _Signal:
  """StopRequest.requested, counted; `after_call`: a signal arrives right after that decision."""

  def __init__(self, monkeypatch, after_call=None):
    self.calls, self.after_call = 0, after_call
    original = preemption.StopRequest.requested

    def requested(stop):
      self.calls += 1
      answer = original(stop)
      if self.calls == self.after_call:
        stop.signal_name = "SIGTERM"  # lands after this step's one decision
      return answer
    monkeypatch.setattr(preemption.StopRequest, "requested", requested)


def test_one_stop_decision_per_step(tmp_path, monkeypatch):
  signal = _Signal(monkeypatch)
  _, last = _run(str(tmp_path / "run"), steps=5)
  assert signal.calls == 5 and last["loss"] >= 0  # one decision (one collective) per step


def test_a_signal_after_a_diverged_steps_decision_never_saves_that_step(tmp_path, monkeypatch):
  # Update 3 (index 2) is NaN; the signal arrives right after its stop decision. The next
  # step checks update 3 before anything stops or saves: nothing of it is written.
  _Signal(monkeypatch, after_call=3)
  workdir = str(tmp_path / "run")
  with pytest.raises(health.NonFiniteError, match=r"^Non-finite loss at step 3 .* The newest "
                                                  r"checkpoint, .*/checkpoints/2, is from"):
    _run(workdir, every=2, nan_loss_at=(2,))
  assert _saved_steps(workdir) == [2]


def test_a_signal_stops_after_the_next_step_which_is_checked_and_saved(tmp_path, monkeypatch):
  _Signal(monkeypatch, after_call=3)
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.Preempted, match=r"after step 4; newest checkpoint: "
                                             r".*/checkpoints/4\. Rerun"):
    _run(workdir, every=100)
  assert _saved_steps(workdir) == [4]


def test_a_non_finite_state_is_stopped_before_it_is_saved(tmp_path):
  # Loss and gradients stay finite; the new method state (an EMA) does not.
  workdir = str(tmp_path / "run")
  with pytest.raises(health.NonFiniteError,
                     match=r"^Non-finite new parameters or state .* at step 4 "):
    _run(workdir, every=2, inf_state_at=(3,))
  assert _saved_steps(workdir) == [2]


def test_hooks_run_on_checked_states_only(tmp_path):
  seen = []
  with pytest.raises(health.NonFiniteError, match="at step 3"):
    _run(str(tmp_path / "run"), hooks=((1, lambda state, done: seen.append(done)),),
         nan_loss_at=(2,))
  assert seen == [1, 2]


def test_skipped_updates_keep_the_optimizer_on_the_step_and_resume_exactly(tmp_path, monkeypatch):
  straight, _ = _run(str(tmp_path / "straight"), action="skip", nan_loss_at=(1, 2))
  straight = jax.device_get(straight)
  assert int(straight.skipped_updates) == 2 and int(straight.step) == 6
  # The schedule's counter is the step, not the number of applied updates.
  (count,) = [leaf for path, leaf in jax.tree.leaves_with_path(straight.opt_state)
              if jax.tree_util.keystr(path).endswith(".count")]
  assert int(count) == 6

  # Preempted after step 3 (a skipped one, checked and saved), then resumed to 6.
  workdir = str(tmp_path / "resumed")
  with monkeypatch.context() as m:
    _Signal(m, after_call=2)
    with pytest.raises(errors.Preempted, match="after step 3"):
      _run(workdir, action="skip", nan_loss_at=(1, 2))
  resumed, _ = _run(workdir, action="skip", nan_loss_at=(1, 2))
  chex.assert_trees_all_equal(jax.device_get(resumed.params), straight.params)
  chex.assert_trees_all_equal(jax.device_get(resumed.opt_state), straight.opt_state)
  chex.assert_trees_all_equal(jax.device_get(resumed.method_state), straight.method_state)
  assert int(resumed.skipped_updates) == 2


def test_a_loop_without_checkpoints_stops_unsaved_on_a_signal(tmp_path, monkeypatch):
  _Signal(monkeypatch, after_call=1)
  with pytest.raises(errors.Preempted, match="after step 2, before it finished .* keeps no "
                                             "checkpoint"):
    _run(str(tmp_path / "run"), checkpoints=False)

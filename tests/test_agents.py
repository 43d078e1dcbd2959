"""Agents: episodic collection, the VLM reward reaching SAC's replay buffer, pretraining cache,
save/load continuity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import plant_payload

from rls3.agents import (AGENT_SPECS, BUFFER_FILE, MODEL_FILE, AgentStateError, RandomAgent,
                         SACAgent, build_agent, pretrained_folder, pretrain_key, restore_agent)
from rls3.config import AGENTS, AgentConfig
from rls3.env import EnvConfig, Rls3Env
from rls3.manifest import manifest_problems

EXTRINSIC = 50.0


@pytest.fixture(scope="module")
def backend():
    from rls3.sim import SimBackend

    b = SimBackend(["kitchen"])
    yield b
    b.close()


def make_env(backend, feedback=None):
    return Rls3Env(backend, EnvConfig(t0=3, image_size=16, render=False, max_steps=200),
                   feedback=feedback)


def agent_cfg(tmp_path, **kw):
    base = dict(pretrain_steps=120, learning_starts=40, batch_size=16, buffer_size=4000,
                net_arch=(32, 32), pretrained_dir=str(tmp_path / "pre"))
    base.update(kw)
    return AgentConfig(**base)


class Recorder:
    def __init__(self):
        self.steps, self.done, self.completed = 0, 0, 0

    def __call__(self, info, reward, done):
        self.steps += 1
        self.done += done
        self.completed += done and info["n_valid"] >= 3


def test_random_agent_collects_whole_episodes_and_resumes(backend, tmp_path):
    calls = []
    env = make_env(backend, feedback=lambda frames: calls.append(len(frames)) or 0.0)
    agent = RandomAgent(env, seed=3)
    rec = Recorder()
    steps = agent.collect(2, seed=11, on_step=rec)
    assert rec.completed == 2 and calls == [3, 3] and steps == rec.steps
    assert agent.num_timesteps == steps
    agent.save(tmp_path / "a")
    more = agent.rng.uniform(size=4)
    other = RandomAgent(make_env(backend), seed=99)
    other.load(tmp_path / "a")
    assert np.array_equal(other.rng.uniform(size=4), more) and other.num_timesteps == steps
    with pytest.raises(FileNotFoundError):
        other.load(tmp_path / "nothing")


def test_sac_pretrains_once_and_caches(backend, tmp_path):
    cfg = agent_cfg(tmp_path)
    env = make_env(backend)
    key = pretrain_key(cfg, env, 0, "sim")
    folder = pretrained_folder(cfg, key)
    agent = build_agent("sac", env, cfg, 0, "sim")
    assert isinstance(agent, SACAgent) and agent.num_timesteps == cfg.pretrain_steps
    assert (folder / MODEL_FILE).is_file() and (folder / BUFFER_FILE).is_file()
    stamp = (folder / MODEL_FILE).stat().st_mtime_ns
    again = build_agent("sac", make_env(backend), cfg, 0, "sim")
    assert (folder / MODEL_FILE).stat().st_mtime_ns == stamp  # reused, not retrained
    assert again.model.replay_buffer.size() == cfg.pretrain_steps
    # rendering and image size do not change the key; the seed and the dynamics do
    env2 = Rls3Env(backend, EnvConfig(t0=3, image_size=64, render=True, max_steps=200))
    assert pretrain_key(cfg, env2, 0, "sim") == key
    assert pretrain_key(cfg, env, 1, "sim") != key
    assert pretrain_key(agent_cfg(tmp_path, gamma=0.9), env, 0, "sim") != key


def test_the_pretraining_schedule_applies_to_pretraining_only(backend, tmp_path):
    """`agent.pretrain_*` set SAC's updates while pre-training (n_updates counts them) and enter
    the cache key; the loaded agent trains on the loop's schedule; unset, the key is the one
    caches were written under before these fields existed."""
    import json

    from rls3.agents import STATE_FILE

    env = make_env(backend)
    base = agent_cfg(tmp_path)
    fast = agent_cfg(tmp_path, pretrain_train_freq=4, pretrain_gradient_steps=2,
                     pretrain_batch_size=32)
    assert not {"pretrain_train_freq", "pretrain_gradient_steps",
                "pretrain_batch_size"} & set(pretrain_key(base, env, 0, "sim")["agent"])
    key = pretrain_key(fast, env, 0, "sim")
    assert key != pretrain_key(base, env, 0, "sim") and key["agent"]["pretrain_batch_size"] == 32
    agent = build_agent("sac", env, fast, 0, "sim")
    state = json.loads((pretrained_folder(fast, key) / STATE_FILE).read_text())
    # updates start after learning_starts: one round of 2 per 4 steps
    assert state["n_updates"] == 2 * ((fast.pretrain_steps - fast.learning_starts) // 4)
    m = agent.model
    assert (m.train_freq.frequency, m.gradient_steps, m.batch_size) == (1, 1, 16)
    with pytest.raises(ValueError, match="agent.pretrain_batch_size"):
        agent_cfg(tmp_path, pretrain_batch_size=0)


def test_multi_tensor_adam_trains_sac_exactly_as_the_per_parameter_loop(backend, tmp_path,
                                                                         monkeypatch):
    """SAC's actor and critic optimizers run torch's `foreach` Adam; pre-training with it gives
    the weights of the per-parameter loop (torch's CPU default) bit for bit."""
    import torch

    import rls3.agents as agents

    weights = []
    for foreach in (True, False):
        monkeypatch.setattr(agents, "ADAM_KWARGS", {"foreach": foreach})
        cfg = agent_cfg(tmp_path / str(foreach), pretrain_steps=300, learning_starts=50)
        agent = build_agent("sac", make_env(backend), cfg, 0, "sim")
        assert agent.model.actor.optimizer.param_groups[0]["foreach"] is foreach
        weights.append(agent.model.policy.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    agent.save(tmp_path / "per-parameter")      # a state saved by the per-parameter loop ...
    monkeypatch.setattr(agents, "ADAM_KWARGS", {"foreach": True})
    again = build_agent("sac", make_env(backend), cfg, 0, "sim")
    again.load(tmp_path / "per-parameter")      # ... loads and still runs multi-tensor
    for opt in (again.model.actor.optimizer, again.model.critic.optimizer):
        assert all(g["foreach"] is True for g in opt.param_groups)


@pytest.mark.parametrize("gamma", [0.0, 0.99])
def test_the_policy_skipping_mode_switches_trains_sac_exactly_as_sb3s(backend, tmp_path,
                                                                      monkeypatch, gamma):
    """`LazyModePolicy` (no train/eval walk when the mode is already set; at gamma = 0 no next
    states' actions or target Q values) pre-trains and then collects to the weights (target
    critics included), replay buffer and torch RNG state of SB3's own MlpPolicy, bit for bit; it
    does switch when the mode changes, and takes the gamma = 0 shortcut only at gamma = 0."""
    import rls3.agents as agents

    runs = []
    for policy in ("MlpPolicy", agents.LazyModePolicy):
        monkeypatch.setattr(agents, "POLICY", policy)
        cfg = agent_cfg(tmp_path / str(policy), pretrain_steps=300, learning_starts=50,
                        gamma=gamma)
        agent = build_agent("sac", make_env(backend, feedback=lambda frames: 2.0), cfg, 0, "sim")
        agent.collect(2, seed=4)
        runs.append((agent.model.policy.state_dict(), agent.model.replay_buffer.rewards.copy(),
                     torch.get_rng_state()))
    (w1, r1, g1), (w2, r2, g2) = runs
    assert all(torch.equal(w1[k], w2[k]) for k in w1) and np.array_equal(r1, r2)
    assert torch.equal(g1, g2)
    assert any(k.startswith("critic_target.") for k in w1)
    policy = agent.model.policy  # the last run's
    assert isinstance(policy, agents.LazyModePolicy)
    assert isinstance(policy.critic_target, agents._DiscardedTargetCritic) is (gamma == 0.0)
    assert isinstance(policy.actor, agents._DiscountFreeActor) is (gamma == 0.0)
    policy.set_training_mode(True)
    assert policy.actor.training and policy.critic.training
    policy.set_training_mode(False)
    assert not policy.actor.training and not policy.critic.training and not policy.training


def test_a_corrupt_pretrained_cache_is_rebuilt(backend, tmp_path, caplog):
    """Bytes flipped in the cached model file: the next run pre-trains again (with a warning)
    instead of failing on a bad zip forever (issue 13, item 2)."""
    cfg = agent_cfg(tmp_path)
    env = make_env(backend)
    folder = pretrained_folder(cfg, pretrain_key(cfg, env, 0, "sim"))
    build_agent("sac", env, cfg, 0, "sim")
    assert (folder / "manifest.json").is_file()
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[100:4196] = bytes(4096)
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="rls3.agents"):
        again = build_agent("sac", make_env(backend), cfg, 0, "sim")
    assert f"{MODEL_FILE} altered" in caplog.text and "pre-training again" in caplog.text
    assert again.num_timesteps == cfg.pretrain_steps
    assert not manifest_problems(folder)


def test_sac_learns_from_the_episode_completing_reward(backend, tmp_path):
    cfg = agent_cfg(tmp_path)
    env = make_env(backend, feedback=lambda frames: EXTRINSIC)
    agent = build_agent("sac", env, cfg, 0, "sim")
    rb = agent.model.replay_buffer
    before, updates = rb.size(), agent.model._n_updates
    rec = Recorder()
    steps = agent.collect(2, seed=5, on_step=rec)
    assert rec.completed == 2 and steps == rec.steps
    assert agent.num_timesteps == cfg.pretrain_steps + steps
    assert rb.size() == before + steps  # every step stored, including the last one
    new = rb.rewards[before:before + steps, 0]
    assert np.sum(new > EXTRINSIC - 1.5) == 2 and new[-1] > EXTRINSIC - 1.5
    assert agent.model._n_updates == updates + steps  # one gradient step per env step


def test_sac_save_load_continues_identically(backend, tmp_path):
    cfg = agent_cfg(tmp_path)
    env = make_env(backend, feedback=lambda frames: 1.0)
    agent = build_agent("sac", env, cfg, 0, "sim")
    agent.collect(1, seed=1)
    agent.save(tmp_path / "ck")
    import torch

    state = torch.get_rng_state(), np.random.get_state()
    agent.collect(1, seed=2)
    obs = np.zeros((1, 32), np.float32)
    a1 = agent.model.predict(obs, deterministic=True)[0]
    loaded = SACAgent.from_folder(make_env(backend, feedback=lambda frames: 1.0), tmp_path / "ck",
                                  cfg)
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    loaded.collect(1, seed=2)
    a2 = loaded.model.predict(obs, deterministic=True)[0]
    assert loaded.num_timesteps == agent.num_timesteps
    assert np.array_equal(a1, a2)


def test_bad_agent_name(backend):
    with pytest.raises(ValueError, match=r"unknown agent 'ppo'; allowed: \['sac', 'random'\]"):
        build_agent("ppo", make_env(backend), AgentConfig(), 0, "sim")


def test_the_registry_holds_the_agents_the_config_allows():
    """config.py (which imports nothing above it) lists the names; the registry their makers."""
    assert tuple(AGENT_SPECS) == AGENTS
    assert {n: s.learns_from_feedback for n, s in AGENT_SPECS.items()} == {"sac": True,
                                                                          "random": False}


def test_a_random_agent_restored_from_its_folder_continues_its_stream(backend, tmp_path):
    env = make_env(backend)
    agent = build_agent("random", env, AgentConfig(), 5, "sim")
    agent.collect(1, seed=1)
    agent.save(tmp_path / "agent")
    again = restore_agent("random", env, tmp_path / "agent", AgentConfig(), 5)
    assert isinstance(again, RandomAgent) and again.num_timesteps == agent.num_timesteps
    assert np.array_equal(again.rng.random(4), agent.rng.random(4))


def test_sample_feedback_reaches_the_buffer_before_the_next_gradient_step(backend, tmp_path):
    """Per-sample feedback: every valid step's extrinsic reward is in SAC's replay buffer when
    the first gradient step after that transition runs (a late delivery, e.g. patched into the
    buffer after training, fails the snapshot comparison)."""
    scores = []

    def score(frame):
        scores.append(0.1 * (len(scores) + 1))
        return scores[-1]

    env = Rls3Env(backend, EnvConfig(t0=3, image_size=16, render=False, max_steps=200),
                  step_feedback=score)
    agent = build_agent("sac", env, agent_cfg(tmp_path), 0, "sim")
    rb, model = agent.model.replay_buffer, agent.model
    before = rb.pos
    expected: list[float] = []

    def on_step(info, reward, done):
        expected.append(1.0 + info["extrinsic"] if info["valid"] else -1.0)
        assert reward == pytest.approx(expected[-1])

    snapshots = []
    train = model.train

    def spy(*args, **kwargs):
        snapshots.append(rb.rewards[before:rb.pos, 0].copy())
        return train(*args, **kwargs)

    model.train = spy
    steps = agent.collect(2, seed=3, on_step=on_step)
    assert len(snapshots) == steps and len(scores) == 6
    for n, snap in enumerate(snapshots, 1):   # the n-th gradient step sees n stored steps
        assert len(snap) == n
        np.testing.assert_allclose(snap, expected[:n], rtol=1e-6)
    assert sum(1 for e in expected if e > 1.0) == 6


def test_sample_feedback_reaches_the_buffer_before_the_next_gradient_step_with_two_workers(
        backend, tmp_path):
    """Issue 14: with two scene workers the main process scores each worker's valid frames
    (FeedbackVecEnv) and the reward is in SAC's replay buffer (one row per vec step, one column
    per worker) when the next gradient steps run; SAC trains 2 x gradient_steps per vec step."""
    from rls3.backends import BackendConfig
    from rls3.workers import make_workers

    scores, workers_seen = [], []

    def score(frame, worker):
        workers_seen.append(worker)
        scores.append(0.1 * (len(scores) + 1))
        return scores[-1]

    env_cfg = EnvConfig(t0=3, image_size=16, render=False, max_steps=200)
    vec = make_workers(BackendConfig(train_scenes=("kitchen",)), env_cfg, 2,
                       {"step_feedback": score})
    try:
        agent = build_agent("sac", make_env(backend), agent_cfg(tmp_path), 0, "sim", workers=vec)
        rb, model = agent.model.replay_buffer, agent.model
        assert model.n_envs == 2 and model.gradient_steps == 2 and rb.n_envs == 2
        before = rb.pos
        assert before == 60  # the 120 pre-training transitions, two per row
        expected: list[float] = []
        counted = Recorder()

        def on_step(info, reward, done):
            counted(info, reward, done)
            expected.append(1.0 + info["extrinsic"] if info["valid"] else -1.0)
            assert reward == pytest.approx(expected[-1])

        snapshots = []
        train = model.train

        def spy(*args, **kwargs):
            snapshots.append(rb.rewards[before:rb.pos].copy())
            return train(*args, **kwargs)

        model.train = spy
        steps = agent.collect(2, seed=3, on_step=on_step)
    finally:
        vec.close()
    assert steps == 2 * len(snapshots) == counted.steps
    for n, snap in enumerate(snapshots, 1):   # the n-th vec step's gradient steps see n rows
        assert snap.shape == (n, 2)
        np.testing.assert_allclose(snap.reshape(-1), expected[:2 * n], rtol=1e-6)
    assert sum(1 for e in expected if e > 1.0) == len(scores) >= 6
    assert set(workers_seen) == {0, 1}
    assert counted.completed >= 2   # a third completion on the last step is abandoned


class Deferred:
    """The `DeferredFeedback` seam as `EpisodeCollector` fills it: valid frames queue (0 on
    their step), `flush` scores them with increasing rewards 0.1, 0.2, ... in queue order."""

    feedback_batch = 64

    def __init__(self):
        self.queue, self.scored, self.flushes = [], [], []

    @property
    def queued(self):
        return len(self.queue)

    def score_step(self, frame, worker=0):
        self.queue.append(worker)
        return 0.0

    def flush(self):
        out = []
        for w in self.queue:
            self.scored.append(0.1 * (len(self.scored) + 1))
            out.append((w, self.scored[-1]))
        self.flushes.append(len(self.queue))
        self.queue = []
        return out


@pytest.mark.parametrize("workers", [1, 2])
def test_deferred_feedback_reaches_the_buffer_before_the_next_gradient_step(
        backend, tmp_path, workers):
    """`loop.feedback_batch`: with train_freq = gradient_steps = 4 the frames of each 4-step
    rollout are scored together at its end, and every stored transition carries its complete
    reward (1 + extrinsic when valid) whenever SAC's gradient steps run; none is left unscored."""
    from rls3.backends import BackendConfig
    from rls3.workers import make_workers

    dq = Deferred()
    env_cfg = EnvConfig(t0=3, image_size=16, render=False, max_steps=200)
    cfg = agent_cfg(tmp_path, train_freq=4, gradient_steps=4)
    vec = None
    if workers == 2:
        vec = make_workers(BackendConfig(train_scenes=("kitchen",)), env_cfg, 2,
                           {"step_feedback": dq.score_step})
    try:
        env = Rls3Env(backend, env_cfg, step_feedback=dq.score_step)
        agent = build_agent("sac", env, cfg, 0, "sim", workers=vec)
        rb, model = agent.model.replay_buffer, agent.model
        assert model.gradient_steps == 4 * workers
        before = rb.pos
        valid: list[bool] = []

        def on_step(info, reward, done):
            valid.append(bool(info["valid"]))
            assert reward == (1.0 if info["valid"] else -1.0) and info["extrinsic"] == 0.0

        snapshots = []
        train = model.train

        def spy(*args, **kwargs):
            snapshots.append(rb.rewards[before:rb.pos].reshape(-1).copy())
            return train(*args, **kwargs)

        model.train = spy
        steps = agent.collect(2, seed=3, on_step=on_step, deferred=dq)
    finally:
        if vec is not None:
            vec.close()
    assert steps == len(valid) == 4 * workers * len(snapshots)   # whole rollouts of 4 steps
    assert dq.queue == [] and sum(dq.flushes) == sum(valid) >= 6
    assert len(dq.flushes) == len(snapshots)                     # one flush per rollout
    scores = iter(dq.scored)
    expected = [1.0 + next(scores) if v else -1.0 for v in valid]
    for n, snap in enumerate(snapshots, 1):   # the n-th train() sees n rollouts, all complete
        np.testing.assert_allclose(snap, expected[:4 * workers * n], rtol=1e-6)


def test_the_random_agent_flushes_deferred_feedback_in_batches(backend):
    dq = Deferred()
    dq.feedback_batch = 2
    env = Rls3Env(backend, EnvConfig(t0=3, image_size=16, render=False, max_steps=200),
                  step_feedback=dq.score_step)
    RandomAgent(env, seed=1).collect(2, seed=4, deferred=dq)
    assert dq.queue == [] and sum(dq.flushes) == len(dq.scored) >= 6
    assert set(dq.flushes[:-1]) == {2} and dq.flushes[-1] in (0, 1)


def test_pretrained_buffer_is_laid_out_for_n_envs():
    """The one-env pre-training buffer loaded for N envs: the newest len // N * N transitions,
    oldest first, N per row (each with its own next observation)."""
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer

    from rls3.agents import _relayout_buffer

    obs_space = spaces.Box(-1, 1, (2,), np.float32)
    act_space = spaces.Box(-1, 1, (3,), np.float32)
    old = ReplayBuffer(4, obs_space, act_space, n_envs=1)
    for t in range(7):   # wraps: holds transitions 3..6
        old.add(np.full((1, 2), t), np.full((1, 2), t + 0.5), np.full((1, 3), t / 10),
                np.array([t]), np.array([t % 2 == 0]), [{}])
    new = _relayout_buffer(old, ReplayBuffer(10, obs_space, act_space, n_envs=2))
    assert new.pos == 2 and not new.full
    np.testing.assert_array_equal(new.rewards[:2], [[3, 4], [5, 6]])
    np.testing.assert_array_equal(new.observations[:2, :, 0], [[3, 4], [5, 6]])
    np.testing.assert_array_equal(new.next_observations[:2, :, 0], [[3.5, 4.5], [5.5, 6.5]])
    np.testing.assert_array_equal(new.dones[:2], [[0, 1], [0, 1]])
    back = _relayout_buffer(new, ReplayBuffer(3, obs_space, act_space, n_envs=1))
    assert back.full and back.pos == 0   # capacity 3: the newest three, oldest first
    np.testing.assert_array_equal(back.rewards[:, 0], [4, 5, 6])


def test_a_worker_that_cannot_start_is_a_named_error():
    """A worker process whose backend fails to build ends in one WorkerError, not a bare pipe
    error."""
    from rls3.backends import BackendConfig
    from rls3.workers import WorkerError, make_workers

    with pytest.raises(WorkerError, match=r"scene workers did not start: worker \d \(pid \d+\) "
                                          r"exited with code 1 \(its error is printed above\)"):
        make_workers(BackendConfig(train_scenes=("no_such_room",)),
                     EnvConfig(t0=3, image_size=16, render=False), 2, {})
    with pytest.raises(ValueError, match="2 or more workers"):
        make_workers(BackendConfig(), EnvConfig(), 1, {})


# ------------------------------------------------------------------------------------ issue 25
def test_a_pickle_payload_in_the_pretraining_cache_never_runs(backend, tmp_path, caplog):
    """Issue 25, item 1: a payload whose unpickling creates a marker file, planted in each file
    a cache load reads (and under the pickled names of agent format 1), the manifest rewritten
    to match: the marker never appears; each load is a one-line AgentStateError saying to delete
    the cache, except a bad manifest, which is rebuilt as before."""
    import shutil

    from rls3.agents import KEY_FILE, OPTIMIZERS_FILE, PICKLED_FILES, STATE_FILE
    from rls3.manifest import MANIFEST_FILE, write_manifest

    cfg = agent_cfg(tmp_path)
    folder = pretrained_folder(cfg, pretrain_key(cfg, make_env(backend), 0, "sim"))
    build_agent("sac", make_env(backend), cfg, 0, "sim")
    pristine = shutil.copytree(folder, tmp_path / "pristine")
    marker = tmp_path / "marker"
    names = [MODEL_FILE, OPTIMIZERS_FILE, BUFFER_FILE, STATE_FILE, KEY_FILE, *PICKLED_FILES]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MANIFEST_FILE, *names[:5]])
    for name in names:
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
        plant_payload(folder / name, marker)
        write_manifest(folder)
        with pytest.raises(AgentStateError, match="delete .* to pre-train again") as e:
            build_agent("sac", make_env(backend), cfg, 0, "sim")
        assert not marker.exists(), name
        assert folder.name in str(e.value) and "\n" not in str(e.value)
    plant_payload(folder / MANIFEST_FILE, marker)
    with caplog.at_level("WARNING", logger="rls3.agents"):
        again = build_agent("sac", make_env(backend), cfg, 0, "sim")
    assert "bad manifest.json" in caplog.text and not marker.exists()
    assert again.num_timesteps == cfg.pretrain_steps


def test_a_random_agent_state_is_data_only(backend, tmp_path):
    """Issue 25, item 1: the random agent's state is JSON; a payload in its place is a named
    error and never runs."""
    from rls3.agents import RANDOM_FILE

    agent = RandomAgent(make_env(backend), seed=3)
    agent.save(tmp_path / "a")
    marker = tmp_path / "marker"
    plant_payload(tmp_path / "a" / RANDOM_FILE, marker)
    with pytest.raises(AgentStateError, match=RANDOM_FILE):
        RandomAgent(make_env(backend), seed=3).load(tmp_path / "a")
    (tmp_path / "a" / RANDOM_FILE).write_text('{"format": 2, "agent": "random", "rng": 5, '
                                              '"num_timesteps": 0}')
    with pytest.raises(AgentStateError, match="malformed random-agent state"):
        RandomAgent(make_env(backend), seed=3).load(tmp_path / "a")
    assert not marker.exists()


def test_sac_files_are_data_and_checked(backend, tmp_path):
    """Issue 25, item 1: a saved SAC is safetensors, a weights-only tensor dict, npz and JSON;
    the buffer keeps only its filled rows; a buffer of another shape is a named error."""
    import torch
    from safetensors.torch import load_file

    from rls3.agents import OPTIMIZERS_FILE

    cfg = agent_cfg(tmp_path)
    agent = build_agent("sac", make_env(backend), cfg, 0, "sim")
    agent.save(tmp_path / "ck")
    weights = load_file(str(tmp_path / "ck" / MODEL_FILE))
    assert "log_ent_coef" in weights and any(k.startswith("policy.critic_target.")
                                             for k in weights)
    opt = torch.load(tmp_path / "ck" / OPTIMIZERS_FILE, weights_only=True)
    assert set(opt) == {"actor.optimizer", "critic.optimizer", "ent_coef_optimizer"}
    with np.load(tmp_path / "ck" / BUFFER_FILE, allow_pickle=False) as z:
        assert z["observations"].shape == (cfg.pretrain_steps, 1, 32) and int(z["pos"]) == 120
        arrays = {k: z[k] for k in z.files}
    arrays["observations"] = arrays["observations"][:, :, :31]
    with open(tmp_path / "ck" / BUFFER_FILE, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(AgentStateError, match=r"sac_buffer\.npz' does not hold this SAC's replay "
                                              r"buffer: observations is float32\[120, 1, 31\]"):
        SACAgent.from_folder(make_env(backend), tmp_path / "ck", cfg)

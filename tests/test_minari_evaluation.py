"""Minari datasets evaluate on their own environment: a dataset made here from Gymnasium's InvertedPendulum
(a scripted balancing controller and a policy that pushes the cart over), data -> train -> eval -> eval.json, lock-step
rollouts whose episodes end at different steps, normalised returns, and one-line errors for datasets whose
environment cannot be had."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from llmdpd.config.load import load_config
from llmdpd.data.minari_store import DatasetError, minari_root
from llmdpd.envs.rendering import read_mp4, rendering_error
from llmdpd.evaluation.environments import EpisodeEnvironments
from llmdpd.evaluation.plan import EvalEpisode, plan_evaluation
from llmdpd.evaluation.rollout import evaluate_episodes

TASK = "pendulum"
DATASET = "mujoco/invertedpendulum/scripted-v0"
HORIZON = 40  # the recorded env's own episode limit
# Gains of a linear balancing controller on [cart position, pole angle, cart velocity, pole angular velocity].
GAINS = np.array([1.0, 10.0, 1.0, 1.0])
# Reference returns written into the dataset: "random" (falls at once) and "expert" (balances to the end).
REF_MIN, REF_MAX = 5.0, float(HORIZON)
# Full force one way: the pole falls within a few steps.
PUSH = np.full(1, 3.0, dtype=np.float32)


def balance(obs: np.ndarray) -> np.ndarray:
    """The controller's action for each observation [n, 4] -> [n, 1]."""
    return np.clip(np.asarray(obs, dtype=np.float64) @ GAINS, -3.0, 3.0)[:, None].astype(np.float32)


def make_pendulum_dataset(root: Path, dataset_id: str = DATASET, env="default", episodes: int = 8) -> None:
    """Half balancing episodes (with action noise), half pushing episodes that fall, written with the
    recording env's spec (`env=None`: none) and reference scores."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    recording = gym.make("InvertedPendulum-v5", max_episode_steps=HORIZON)
    buffers = []
    for i in range(episodes):
        rng = np.random.default_rng(i)
        obs, _ = recording.reset(seed=i)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        while True:
            noise = rng.normal(0, 0.3, 1).astype(np.float32)
            action = balance(obs[None])[0] + noise if i % 2 == 0 else PUSH
            obs, reward, terminated, truncated, _ = recording.step(action)
            for store, value in zip((observations, actions, rewards, terminations, truncations),
                                    (obs, action, reward, terminated, truncated)):
                store.append(value)
            if terminated or truncated:
                break
        buffers.append(EpisodeBuffer(id=i, observations=np.stack(observations), actions=np.stack(actions),
                                     rewards=np.asarray(rewards), terminations=np.asarray(terminations),
                                     truncations=np.asarray(truncations)))
    with minari_root(root):
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=recording if env == "default" else env,
            observation_space=recording.observation_space, action_space=recording.action_space,
            ref_min_score=REF_MIN, ref_max_score=REF_MAX, algorithm_name="balance+noise, do-nothing",
            data_format="hdf5",
        )


@pytest.fixture(scope="module")
def pendulum_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    make_pendulum_dataset(root)
    return root


EXPERIMENT = """
defaults: [base/default]
name: pendulum
data:
  train_tasks: [pendulum]
  unseen_tasks: []
  minari_ids: {pendulum: mujoco/invertedpendulum/scripted-v0}
  descriptions:
    pendulum: ["Keep the pole balanced upright by pushing the cart left and right.",
               "Balance an inverted pendulum on a sliding cart."]
  prompt_episodes: 2
  batch_size_per_task: 16
  prompt_length: 5
  workers: 1
text: {model: minilm, hidden_dim: 32, out_dim: 16}
trajectory: {width: 16, layers: 1, heads: 2}
alignment: {max_steps: 2, prompts_per_task: 2}
policy: {hidden_dim: 32, critic_hidden_dim: 32, num_candidates: 2, ema_start: 1, critic_warmup_steps: 1,
         eta_ramp_steps: 1, n_step: 2}
eval: {episodes_per_task: 3, max_episode_steps: 100, unseen: false}
trainer: {max_steps: 3, log_every_n_steps: 1, accelerator: cpu, devices: 1, enable_progress_bar: false}
checkpoint_every_n_steps: 3
"""


def test_rollouts_on_a_minari_env_end_episodes_apart_and_normalise_returns(pendulum_root):
    environments = EpisodeEnvironments(minari_ids={TASK: DATASET}, data_dir=str(pendulum_root))
    episodes = [EvalEpisode(TASK, "seen", seed, e) for e, seed in enumerate((11, 12, 13, 14))]
    calls = []

    def act(obs, live):  # episodes 0 and 2 balance, 1 and 3 push the pole over
        calls.append(list(live))
        actions = balance(obs)
        actions[[i % 2 == 1 for i in live]] = PUSH
        return actions

    results = evaluate_episodes(episodes, act, 100, environments=environments)
    lengths = [r.length for r in results]
    assert lengths[0] == lengths[2] == HORIZON and lengths[1] < HORIZON and lengths[3] < HORIZON
    assert calls[0] == [0, 1, 2, 3] and calls[-1] == [0, 2] and len(calls) == HORIZON
    for r in results:
        # InvertedPendulum pays 1 per step that ends upright: nothing for the step it falls in.
        assert r.episode_return == pytest.approx(r.length - (r.length < HORIZON))
        assert r.success is None and r.final_success is None  # the env reports no success
        assert r.normalized_return == pytest.approx((r.episode_return - REF_MIN) / (REF_MAX - REF_MIN))
    # The same episodes from two worker processes.
    calls.clear()
    assert evaluate_episodes(episodes, act, 100, environments=environments, workers=2) == results
    assert calls[0] == [0, 1, 2, 3] and calls[-1] == [0, 2]


def test_minari_tasks_plan_reset_seeds_apart_per_split(pendulum_root):
    cfg = load_config("smoke", [f"data.train_tasks=[{TASK}]", "data.unseen_tasks=[]",
                                f"data.minari_ids={{{TASK}: {DATASET}}}", "eval.episodes_per_task=4"])
    test = plan_evaluation(cfg.eval, [TASK], [], cfg.data)
    cfg.eval.split = "validation"
    validation = plan_evaluation(cfg.eval, [TASK], [], cfg.data)
    seeds = [e.goal for e in test] + [e.goal for e in validation]
    assert len(set(seeds)) == 8 and all(s >= 0 for s in seeds)
    assert test == plan_evaluation(load_config("smoke", [f"data.train_tasks=[{TASK}]", "data.unseen_tasks=[]",
                                                         f"data.minari_ids={{{TASK}: {DATASET}}}",
                                                         "eval.episodes_per_task=4"]).eval, [TASK], [], cfg.data)


def test_datasets_without_a_buildable_env_are_one_line_errors(tmp_path):
    make_pendulum_dataset(tmp_path, "mujoco/pendulum/noenv-v0", env=None, episodes=2)
    # A dataset recorded in an env this machine lacks: its spec names a package that is not installed.
    make_pendulum_dataset(tmp_path, "mujoco/pendulum/broken-v0", episodes=2)
    metadata_file = tmp_path / "mujoco/pendulum/broken-v0/data/metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["env_spec"] = metadata["env_spec"].replace("gymnasium.envs.mujoco.inverted_pendulum_v5",
                                                        "no_such_package.envs")
    metadata_file.write_text(json.dumps(metadata))
    for dataset, message in (("mujoco/pendulum/noenv-v0", "records no environment spec"),
                             ("mujoco/pendulum/broken-v0", "its environment cannot be built")):
        environments = EpisodeEnvironments(minari_ids={TASK: dataset}, data_dir=str(tmp_path))
        with pytest.raises(DatasetError, match=message) as info:
            environments.check([EvalEpisode(TASK, "seen", 0, 0)])
        assert f"'{dataset}'" in str(info.value) and "\n" not in str(info.value)


def llmdpd(*args: str) -> int:
    """The exit status of the command line `llmdpd ARGS`."""
    from llmdpd.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def test_data_train_eval_on_a_minari_dataset(pendulum_root, tmp_path, capsys):
    experiment = tmp_path / "pendulum.yaml"
    experiment.write_text(EXPERIMENT)
    overrides = [f"paths.data_dir={pendulum_root}", f"paths.runs_dir={tmp_path / 'runs'}",
                 f"paths.cache_dir={tmp_path / 'cache'}"]
    assert llmdpd("data", str(experiment), *overrides) == 0
    assert llmdpd("train", str(experiment), *overrides) == 0
    (run,) = (tmp_path / "runs" / "pendulum" / "seed0").iterdir()
    summary = json.loads((run / "eval.json").read_text())
    entry = summary["tasks"][TASK]
    assert entry["split"] == "seen" and entry["episodes"] == 3 and len(set(entry["goals"])) == 3
    assert entry["success"] is None and summary["seen"]["success_mean"] is None
    assert 0 < entry["return"] <= HORIZON
    assert entry["normalized_return"] == pytest.approx(100 * (entry["return"] - REF_MIN) / (REF_MAX - REF_MIN))
    # The saved policy evaluates again outside training, on the same plan, rendering one episode where it can.
    videos = ["eval.video=1", "eval.video_size=32"] if rendering_error() is None else []
    assert llmdpd("eval", str(experiment), "ckpt=last", *overrides, *videos) == 0
    again = json.loads((run / "eval_last.json").read_text())
    assert again["tasks"][TASK]["goals"] == entry["goals"]
    assert f"| {TASK} | seen | - | - |" in capsys.readouterr().out
    if videos:
        (mp4,) = (run / "videos" / "eval_last").iterdir()
        assert mp4.name == f"{TASK}_seen_ep0.mp4" and read_mp4(mp4).shape[1:] == (32, 32, 3)
        assert list((run / "tb" / "eval").glob("events.out.tfevents.*"))


def test_training_on_a_dataset_whose_env_cannot_be_built_stops_at_once(tmp_path, capsys):
    make_pendulum_dataset(tmp_path / "data", env=None, episodes=4)
    experiment = tmp_path / "pendulum.yaml"
    experiment.write_text(EXPERIMENT)
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.runs_dir={tmp_path / 'runs'}",
             f"paths.cache_dir={tmp_path / 'cache'}"]
    code = llmdpd("train", str(experiment), *paths, "text.enabled=false", "trajectory.enabled=false")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("llmdpd")]
    assert code == 2 and len(err) == 1 and f"'{DATASET}'" in err[0] and "Traceback" not in err[0]

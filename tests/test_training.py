"""`llmdpd train` end to end: the run directory, exact resumption, DDP, and learning on the smoke data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llmdpd.config.load import load_config
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.policy.module import PolicyDiffusionModule
from llmdpd.prompts.text_embeddings import make_text_embedder
from llmdpd.training import pipeline

REPO = Path(__file__).resolve().parents[1]
# Keeps the pipeline runs of these tests small: no alignment stage, no rollouts, quiet trainer.
FAST = [
    "alignment.enabled=false",
    "eval.seen=false",
    "eval.unseen=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def run_command(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # The working directory is the repository, so the default cache_dir holds the cached text embeddings.
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under `log_dir`: tag -> [(step, value)]."""
    series: dict[str, list[tuple[int, float]]] = {}
    for events in sorted({p.parent for p in log_dir.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return series


# ------------------------------------------------------------------------------------------- end to end
def test_llmdpd_train_smoke_leaves_a_complete_run_directory(smoke_data_dir, tmp_path):
    runs = tmp_path / "runs"
    overrides = [f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={runs}"]
    run_command([sys.executable, "-m", "llmdpd", "train", "smoke", *overrides], timeout=300)
    run = runs / "smoke" / "seed0" / "version_0"

    # config.yaml: the resolved config, which loads back as an experiment of its own.
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.name == "smoke" and saved.seed == 0
    assert saved.paths.data_dir == str(smoke_data_dir) and saved.trainer.max_steps == 60
    assert OmegaConf.to_container(load_config(str(run / "config.yaml"))) == OmegaConf.to_container(saved)
    # provenance.json: this invocation's commit, libraries and threads.
    [entry] = json.loads((run / "provenance.json").read_text())
    assert entry["command"].startswith("llmdpd train smoke") and entry["libraries"]["torch"] == torch.__version__
    assert len(entry["commit"]) == 40 and isinstance(entry["torch_threads"], int) and entry["device"]

    # last.ckpt: the final policy with its normaliser and config.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 60
    assert {"step30.ckpt", "step60.ckpt", "last.ckpt"} <= {p.name for p in (run / "checkpoints").iterdir()}
    dm = MetaWorldDataModule(load_config("smoke", [f"paths.data_dir={smoke_data_dir}"]))
    dm.setup("fit")
    assert torch.equal(ckpt["state_dict"]["obs_mean"], dm.normalizer.mean)
    assert torch.equal(ckpt["state_dict"]["obs_std"], dm.normalizer.std)
    assert ckpt["state_dict"]["reward_scale"].item() == pytest.approx(0.1)
    assert ckpt["hyper_parameters"]["cfg"] == OmegaConf.to_container(saved, resolve=True)
    loaded = PolicyDiffusionModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert torch.equal(loaded.obs_std, dm.normalizer.std)

    # TensorBoard: both stages' curves and the evaluation, readable by TensorBoard's own reader.
    series = scalars(run / "tb")
    wanted = ["train/loss_bc", "train/loss_critic", "lr/actor", "align/loss"]
    wanted += ["eval/seen/success_mean", "eval/unseen/success_mean"]
    assert set(wanted) <= set(series), sorted(series)
    assert [step for step, _ in series["train/loss_bc"]] == [9, 19, 29, 39, 49, 59]  # log_every_n_steps=10
    # Alignment: the two training tasks' demonstrations retrieve their own descriptions (chance 0.5).
    assert series["align/retrieval/seen"][-1][1] == 1.0
    assert all(math.isfinite(value) for tag in wanted for _, value in series[tag])
    # Cosine schedule from the actor's learning rate to 0 over the 60 policy steps.
    lr = dict(series["lr/actor"])
    assert lr[59] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 59 / 60)), rel=1e-4)

    # eval.json: per task and per split, matching the logged curves.
    result = json.loads((run / "eval.json").read_text())
    assert {task: entry["split"] for task, entry in result["tasks"].items()} == {
        "reach-v3": "seen",
        "button-press-topdown-v3": "seen",
        "drawer-close-v3": "unseen",
    }
    assert (result["seen"]["tasks"], result["seen"]["episodes"]) == (2, 4)
    assert (result["unseen"]["tasks"], result["unseen"]["episodes"]) == (1, 2)
    for split in ("seen", "unseen"):
        assert 0.0 <= result[split]["success_mean"] <= 1.0
        assert series[f"eval/{split}/success_mean"][-1] == (60, pytest.approx(result[split]["success_mean"]))


# --------------------------------------------------------------------------------------------- resuming
class StopAt(L.Callback):
    """Ends training after `step` optimizer steps, as a preempted job would (max_steps stays unchanged)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def add_policy_callbacks(monkeypatch: pytest.MonkeyPatch, *callbacks: L.Callback) -> None:
    """Make the pipeline's policy-stage trainer run these callbacks too."""
    stage_trainer = pipeline._stage_trainer

    def with_callbacks(cfg, directory, max_steps, name, stage_callbacks, **extra):
        extra_callbacks = list(callbacks) if name == "policy" else []
        return stage_trainer(cfg, directory, max_steps, name, stage_callbacks + extra_callbacks, **extra)

    monkeypatch.setattr(pipeline, "_stage_trainer", with_callbacks)


def assert_same_tensors(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values are exactly equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where}: max difference {(a.float() - b.float()).abs().max().item():.3g}"
    else:
        assert a == b, where


def test_stopped_and_resumed_run_equals_uninterrupted_run(smoke_data_dir, tmp_path, monkeypatch):
    # M steps, stop, resume with ckpt=last up to 2M. The cosine schedule, the EMA's switch from copying to
    # averaging (ema_start) and prompt dropout all straddle the resume point. The alignment stage and the
    # rollouts are off: the alignment stage resumes from its own checkpoints, and rollouts run after training.
    m = 6
    common = FAST + [
        f"paths.data_dir={smoke_data_dir}",
        f"paths.runs_dir={tmp_path}",
        f"trainer.max_steps={2 * m}",
        f"checkpoint_every_n_steps={m}",
        "policy.ema_start=4",
        "policy.ema_every=3",
        "policy.prompt_dropout=0.3",
    ]
    full = pipeline.train(load_config("smoke", common + ["run_name=full"]))

    with monkeypatch.context() as patch:
        add_policy_callbacks(patch, StopAt(m))
        stopped = pipeline.train(load_config("smoke", common + ["run_name=stopped"]))
    assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == m
    # train() reseeds the global RNG, so the checkpoint's RNG state must be what continues the stream.
    resumed = pipeline.train(load_config("smoke", common + ["run_name=stopped", "ckpt=last"]))

    want = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)
    got = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert got["global_step"] == want["global_step"] == 2 * m
    assert got["MetaWorldDataModule"] == want["MetaWorldDataModule"] == {"next_batch": 2 * m}
    assert want["state_dict"].keys() == got["state_dict"].keys()
    for name, tensor in want["state_dict"].items():
        assert torch.equal(tensor, got["state_dict"][name]), name
    # The EMA has started averaging, so it is not a copy of the actor.
    weights = want["state_dict"]
    assert not torch.equal(weights["ema_actor.model.net.0.weight"], weights["actor.model.net.0.weight"])
    assert_same_tensors(want["optimizer_states"], got["optimizer_states"], "optimizer")
    assert_same_tensors(want["lr_schedulers"], got["lr_schedulers"], "lr_scheduler")
    assert_same_tensors(want["rng_state"], got["rng_state"], "rng")


# -------------------------------------------------------------------------------------------------- DDP
DDP_SCRIPT = '''
"""`llmdpd train` under 2-process DDP; each rank saves its final state and first batch to rank<r>.pt."""
import hashlib
import sys
from pathlib import Path

import lightning as L
import torch

from llmdpd.config.load import load_config
from llmdpd.training import pipeline

out = Path(sys.argv[1])


class RecordRank(L.Callback):
    def __init__(self):
        self.first_batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_batch is None:
            self.first_batch = hashlib.sha1(batch["obs"].cpu().numpy().tobytes()).hexdigest()

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        record = {"state_dict": state, "first_batch": self.first_batch, "step": trainer.global_step,
                  "world_size": trainer.world_size}
        torch.save(record, out / f"rank{trainer.global_rank}.pt")


stage_trainer = pipeline._stage_trainer


def with_recorder(cfg, directory, max_steps, name, callbacks, **extra):
    extra_callbacks = [RecordRank()] if name == "policy" else []
    return stage_trainer(cfg, directory, max_steps, name, callbacks + extra_callbacks, **extra)


pipeline._stage_trainer = with_recorder
pipeline.train(load_config("smoke", sys.argv[2:]))
'''


def test_ddp_ranks_draw_different_batches_and_keep_identical_parameters(smoke_data_dir, tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    overrides = [
        f"paths.data_dir={smoke_data_dir}",
        f"paths.runs_dir={tmp_path / 'runs'}",
        "alignment.max_steps=4",  # both stages run under DDP: the processes launched for the first serve both
        "eval.seen=false",
        "eval.unseen=false",
        "trainer.max_steps=6",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    run_command([sys.executable, str(script), str(tmp_path), *overrides], timeout=240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [(r["world_size"], r["step"]) for r in ranks] == [(2, 6), (2, 6)]
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"], "both ranks drew the same batches"
    assert ranks[0]["state_dict"].keys() == ranks[1]["state_dict"].keys()
    for name, tensor in ranks[0]["state_dict"].items():
        assert torch.equal(tensor, ranks[1]["state_dict"][name]), name


# --------------------------------------------------------------------------------------------- learning
class LossRecorder(L.Callback):
    """The losses of every training step."""

    def __init__(self) -> None:
        self.losses: dict[str, list[float]] = {"train/loss_bc": [], "train/loss_critic": []}

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        for name, values in self.losses.items():
            values.append(trainer.callback_metrics[name].item())


def test_losses_fall_on_the_smoke_data(smoke_data_dir):
    # A constant, higher actor learning rate than the default 3e-4 (under which the BC loss of the tiny smoke
    # networks barely moves in 100 steps): BC falls from about 1.0 to about 0.2, the critic loss from 0.8 to 0.1.
    L.seed_everything(0)
    learning = ["policy.actor_lr=1e-3", "policy.lr_schedule=constant", "trainer.max_steps=100"]
    cfg = load_config("smoke", [f"paths.data_dir={smoke_data_dir}", *FAST, *learning])
    dm = MetaWorldDataModule(cfg, make_text_embedder(cfg))
    dm.setup("fit")
    module = PolicyDiffusionModule(
        dm.obs_dim, dm.action_dim, dm.text_dim, OmegaConf.to_container(cfg), dm.normalizer.mean, dm.normalizer.std
    )
    recorder = LossRecorder()
    trainer = L.Trainer(
        max_steps=100, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[recorder], log_every_n_steps=1,  # the recorder reads every step
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 100
    for name, values in recorder.losses.items():
        first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
        assert all(math.isfinite(v) for v in values), name
        assert last < 0.5 * first, f"{name}: {first:.3f} over the first 10 steps, {last:.3f} over the last 10"


def test_llmdpd_eval_rescores_a_checkpoint_with_other_wordings(smoke_data_dir, tmp_path):
    runs = tmp_path / "runs"
    paths = [f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={runs}"]
    run_command([sys.executable, "-m", "llmdpd", "train", "smoke", *paths, *FAST, "trainer.max_steps=10"], timeout=300)
    wording = f"Push the drawer shut ({tmp_path.name})."  # new text, so the embedding cache must grow
    wordings = tmp_path / "wordings.yaml"
    wordings.write_text(f'drawer-close-v3: ["{wording}"]\n')
    out = tmp_path / "rescored.json"
    quick = ["eval.episodes_per_task=1", "eval.max_episode_steps=20", "policy.num_candidates=1"]
    result = run_command(
        [sys.executable, "-m", "llmdpd", "eval", "smoke", "ckpt=last", *paths, "--descriptions", str(wordings),
         "eval.prompt_episode=1", *quick, "--out", str(out)],
        timeout=300,
    )
    summary = json.loads(out.read_text())
    assert {task: entry["split"] for task, entry in summary["tasks"].items()} == {
        "reach-v3": "seen", "button-press-topdown-v3": "seen", "drawer-close-v3": "unseen",
    }
    assert all(entry["episodes"] == 1 for entry in summary["tasks"].values())
    assert "| **unseen mean** |" in result.stdout
    cached = [torch.load(f, weights_only=True) for f in (REPO / ".cache" / "llmdpd" / "embeddings").glob("*.pt")]
    assert any(wording in entry["texts"] for entry in cached)

    # The unconditional behaviour, shown to every task or offered to imagined practice in an ensemble of two.
    unconditional = tmp_path / "unconditional.json"
    run_command([sys.executable, "-m", "llmdpd", "eval", "smoke", "ckpt=last", *paths, *quick, "--out", str(unconditional),
                 "eval.prompt_task=unconditional"], timeout=300)
    assert json.loads(unconditional.read_text())["unseen"]["episodes"] == 1
    imagined = tmp_path / "imagined.json"
    result = run_command([sys.executable, "-m", "llmdpd", "eval", "smoke", "ckpt=last", *paths, *quick, "--out",
                          str(imagined), "eval.prompt_retrieval=imagined", "eval.prompt_retrieval_unconditional=true",
                          "world_model.members=2", "world_model.max_spread=0.05", "world_model.steps=20"], timeout=300)
    assert "world model 2/2" in result.stdout
    [(task, retrieval)] = json.loads(imagined.read_text())["prompt_retrieval"].items()
    assert task == "drawer-close-v3" and retrieval["rule"] == "imagined"
    assert set(retrieval["distances"]) == {"reach-v3", "button-press-topdown-v3", "unconditional"}
    assert retrieval["chosen"] == min(retrieval["distances"], key=retrieval["distances"].get)
    # Distilled practice: its ranker learns from the training tasks imagined leave-one-out, then chooses.
    distilled = tmp_path / "distilled.json"
    result = run_command([sys.executable, "-m", "llmdpd", "eval", "smoke", "ckpt=last", *paths, *quick, "--out",
                          str(distilled), "eval.prompt_retrieval=distilled", "world_model.steps=20"], timeout=300)
    assert "distilled practice: ranker on 2 training tasks" in result.stdout
    [(task, retrieval)] = json.loads(distilled.read_text())["prompt_retrieval"].items()
    assert task == "drawer-close-v3" and retrieval["rule"] == "distilled"
    assert set(retrieval["distances"]) == {"reach-v3", "button-press-topdown-v3"}
    assert retrieval["chosen"] == min(retrieval["distances"], key=retrieval["distances"].get)

    wordings.write_text("drawer-close-v3: not a list\n")
    bad = subprocess.run(
        [sys.executable, "-m", "llmdpd", "eval", "smoke", "ckpt=last", *paths, "--descriptions", str(wordings)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "expected a mapping task -> non-empty list" in bad.stderr


def test_llmdpd_diagnose_demonstration_fit_needs_no_checkpoint(smoke_data_dir, tmp_path):
    """The transition models' fit to the unseen task's other demonstrations, in both object frames, with the
    object held on the demonstration's path and reading the demonstration in context, from the data alone: no run
    exists under paths.runs_dir."""
    paths = [f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={tmp_path / 'runs'}",
             f"paths.cache_dir={tmp_path / 'cache'}", "world_model.steps=20"]
    fits = {}
    for setting in ("object_frame=absolute", "object_frame=hand", "object_path=demonstration",
                    "context=demonstration"):
        out = tmp_path / f"fit_{setting}.json"
        result = run_command([sys.executable, "-m", "llmdpd", "diagnose", "smoke", *paths, "--demonstration-fit",
                              f"world_model.{setting}", "--out", str(out)], timeout=300)
        assert f"written: {out}" in result.stdout
        summary = json.loads(out.read_text())
        key, value = setting.split("=")
        assert summary["checkpoint"] is None and summary["world_model"][key] == value
        [(task, fits[setting])] = summary["demonstration_fit"]["tasks"].items()
        assert task == "drawer-close-v3"
        assert all(math.isfinite(v) and v > 0 for v in fits[setting].values()) and len(fits[setting]) == 4
    # Three models, not one read thrice.
    assert fits["object_frame=absolute"] != fits["object_frame=hand"] != fits["context=demonstration"]
    assert fits["object_frame=absolute"] != fits["context=demonstration"]
    # The path holds the absolute frame's model (no third fit) and moves its object, not the truth it is measured on.
    absolute, held = fits["object_frame=absolute"], fits["object_path=demonstration"]
    assert held["other_demonstrations_object_50"] != absolute["other_demonstrations_object_50"]
    assert held["other_demonstrations_object_travel_50"] == absolute["other_demonstrations_object_travel_50"]
    assert len(list((tmp_path / "cache" / "world_models").glob("*.pt"))) == 3
    refused = subprocess.run([sys.executable, "-m", "llmdpd", "diagnose", "smoke", *paths, "--demonstration-fit"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--demonstration-fit needs --out FILE" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_llmdpd_diagnose_splits_action_error_into_bias_and_spread(smoke_data_dir, tmp_path):
    runs = tmp_path / "runs"
    paths = [f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={runs}"]
    # With the aligned prompt encoders frozen, the checkpoint's conditions are those alignment ended with.
    aligned = ["alignment.enabled=true", "alignment.max_steps=5", "alignment.freeze_in_policy_stage=true"]
    run_command([sys.executable, "-m", "llmdpd", "train", "smoke", *paths, *FAST, *aligned, "trainer.max_steps=10"],
                timeout=300)
    result = run_command([sys.executable, "-m", "llmdpd", "diagnose", "smoke", "ckpt=last", *paths,
                          "--rollouts", "1", "--unseen", "--awr", "1", "--modes", "8", "--imagination",
                          "eval.max_episode_steps=40"], timeout=300)
    out = runs / "smoke" / "seed0" / "version_0" / "diagnose_last.json"
    assert f"written: {out}" in result.stdout and result.stdout.count("| **mean** |") == 7
    summary = json.loads(out.read_text())
    assert summary["validation_goals"] == list(range(32, 40)) and summary["samples"] == 16
    assert set(summary["tasks"]) == {"reach-v3", "button-press-topdown-v3"}  # training tasks, never unseen ones
    for entry in summary["tasks"].values():
        assert entry["states"] == 8 * 25  # 250 steps of each validation goal, every 10th
        assert all(math.isfinite(entry[k]) and entry[k] >= 0 for k in ("sample", "temperature0", "one_call", "sample_mean"))
        # A diffusion policy samples: its draws spread, and their mean is nearer the expert than one draw.
        assert entry["spread"] > 0.01
        assert entry["sample_mean"] < entry["sample"]
    spread, at_alignment = summary["condition_spread"], summary["condition_spread_aligned"]
    assert set(spread) == {"text", "trajectory"} and min(spread.values()) > 0  # the two tasks' conditions differ
    assert spread == pytest.approx(at_alignment, rel=1e-5)
    identification = summary["prompt_identification"]
    assert set(identification["tasks"]) == set(summary["tasks"])
    for task, entry in identification["tasks"].items():
        assert entry["best_condition"] in summary["tasks"] and entry["identified"] == float(entry["best_condition"] == task)
        assert entry["own_error"] >= 0 and entry["other_error"] >= 0
    assert 0 <= identification["mean"]["identified"] <= 1
    transfer = summary["prompt_transfer"]["tasks"]
    assert set(transfer) == {"drawer-close-v3"}
    for entry in transfer.values():
        assert {entry[k] for k in ("best_training_task", "behaves_like", "nearest_text", "nearest_trajectory")} <= set(
            summary["tasks"])
        assert all(math.isfinite(entry[k]) and entry[k] >= 0 for k in ("own_error", "null_error", "behaviour_gap"))
    weights = summary["advantage_weights"]
    assert weights["beta"] == 1.0 and set(weights["tasks"]) == set(summary["tasks"])
    for entry in weights["tasks"].values():
        assert sum(v for k, v in entry.items() if k.startswith("weight_share/")) == pytest.approx(1.0)
        assert sum(v for k, v in entry.items() if k.startswith("data_share/")) == pytest.approx(1.0)
        assert 0 < entry["ess"] <= 1 and entry["transitions"] > 0
    modes = summary["action_modes"]
    assert modes["draws"] == 8 and set(modes["tasks"]) == set(summary["tasks"])
    for entry in modes["tasks"].values():  # a diffusion policy's draws spread, so every measure is defined
        assert 0 < entry["bimodality_coefficient"] < 1 and 0 <= entry["bimodal"] <= 1
        assert entry["separation"] > 0 and 0 < entry["principal_share"] <= 1
    rollouts = summary["rollouts"]
    assert rollouts["episodes_per_goal"] == 1 and set(rollouts["tasks"]) == set(summary["tasks"])
    for entry in rollouts["tasks"].values():
        assert entry["episodes"] == 8 and all(0 <= entry[k] <= 1 for k in ("reached_object", "moved_object", "success"))
        assert entry["on_policy_error"] > 0  # ten steps of training do not make the expert
    # Imagined against real practice episodes on the unseen task: errors of the imagination, both rules' choices.
    [(task, imagination)] = summary["imagination"]["tasks"].items()
    assert task == "drawer-close-v3" and {imagination["practice_choice"], imagination["imagined_choice"]} <= set(
        summary["tasks"])
    assert imagination["agree"] == float(imagination["practice_choice"] == imagination["imagined_choice"])
    assert all(math.isfinite(imagination[k]) and imagination[k] >= 0
               for k in ("hand_error_50", "hand_error_end", "object_error", "object_moved", "open_loop_hand_error_50",
                         "open_loop_hand_error_end", "open_loop_object_error"))
    assert imagination["trusted_steps"] == 100  # one model: the whole of the smoke demonstration's 100 steps
    assert imagination["hand_error_end"] > 0  # a model fitted for 50 steps on four episodes is not the physics
    assert imagination["open_loop_hand_error_end"] > 0
    # Under eval.split=validation the held-out validation tasks take the unseen tasks' place.
    held_out = tmp_path / "held_out.json"
    run_command([sys.executable, "-m", "llmdpd", "diagnose", "smoke", "ckpt=last", *paths, "--unseen", "--samples", "2",
                 "eval.split=validation", "data.validation_tasks=[button-press-topdown-v3]", "--out", str(held_out)],
                timeout=300)
    summary = json.loads(held_out.read_text())
    assert set(summary["tasks"]) == {"reach-v3"} and set(summary["prompt_transfer"]["tasks"]) == {"button-press-topdown-v3"}
    assert summary["prompt_transfer"]["tasks"]["button-press-topdown-v3"]["best_training_task"] == "reach-v3"
    # The retrieval oracle on the unseen task, each retrieval rule's choice scored on it; run again on the same
    # file, the rollouts are read back (here: a table edited in between) and only the rules are scored.
    oracle_out = tmp_path / "retrieval.json"
    retrieval = ["--samples", "2", "--retrieval", "1", "eval.max_episode_steps=40", "--out", str(oracle_out)]
    run_command([sys.executable, "-m", "llmdpd", "diagnose", "smoke", "ckpt=last", *paths, *retrieval], timeout=300)
    table = json.loads(oracle_out.read_text())
    unseen = table["retrieval"]["tasks"]["drawer-close-v3"]
    assert table["retrieval"]["plans"] == [1000, 1001]
    assert set(unseen["by_prompt"]) == {"reach-v3", "button-press-topdown-v3"}
    assert set(table["retrieval"]["rules"]) == {"demonstration", "motion", "text", "practice", "imagined", "distilled"}
    for rule in table["retrieval"]["rules"].values():
        assert rule["success"] == unseen["by_prompt"][rule["choices"]["drawer-close-v3"]]
    unseen["by_prompt"] = {"reach-v3": 0.25, "button-press-topdown-v3": 0.75}
    oracle_out.write_text(json.dumps(table))
    run_command([sys.executable, "-m", "llmdpd", "diagnose", "smoke", "ckpt=last", *paths, *retrieval], timeout=300)
    for rule in json.loads(oracle_out.read_text())["retrieval"]["rules"].values():
        assert rule["success"] == {"reach-v3": 0.25, "button-press-topdown-v3": 0.75}[rule["choices"]["drawer-close-v3"]]
    bad = subprocess.run([sys.executable, "-m", "llmdpd", "diagnose", "smoke", "ckpt=last", *paths, "--samples", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--samples must be at least 1" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "llmdpd", "diagnose", "smoke", "ckpt=last", *paths, "--modes", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--modes needs at least 4 draws per state, got 3" in bad.stderr

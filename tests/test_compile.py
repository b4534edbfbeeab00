"""Compiled policy updates (`policy.compile`) and the device-dependent choices behind them, on CPU.

Most tests compile with the `aot_eager` backend (the same Dynamo graphs and AOTAutograd backward, run by eager
kernels: seconds to compile); one `slow` test compiles with Inductor, as `policy.compile=true` does by default.
"""

from __future__ import annotations

import sys
import textwrap

import lightning as L
import pytest
import torch
from torch._dynamo.utils import counters

from llmdpd.config.load import load_config
from llmdpd.policy.module import compile_options
from llmdpd.runs import RUN_DIR_ENV
from llmdpd.training.pipeline import trainer_kwargs
from tests.test_policy import batches, loader, make_module, small_cfg
from tests.test_runs import _sigusr1_resume_matches
from tests.test_training import DDP_SCRIPT, run_command


@pytest.fixture(autouse=True)
def no_run_directory_left_behind(monkeypatch):
    """`pipeline.train` exports its run directory for the DDP processes it starts; later tests must not see it."""
    monkeypatch.setenv(RUN_DIR_ENV, "")
    monkeypatch.delenv(RUN_DIR_ENV)


# ------------------------------------------------------------------------------------ device choices
def test_compile_mode_is_cuda_graphs_on_cuda_and_default_on_cpu():
    assert compile_options(torch.device("cuda", 0)) == {"backend": "inductor", "dynamic": False, "mode": "reduce-overhead"}
    assert compile_options(torch.device("cpu")) == {"backend": "inductor", "dynamic": False, "mode": "default"}
    assert compile_options(torch.device("cuda"), "aot_eager") == {"backend": "aot_eager", "dynamic": False}


def test_precision_and_strategy_follow_the_device(monkeypatch):
    cfg = load_config("smoke")
    assert trainer_kwargs(cfg)["precision"] == "32-true"  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trainer_kwargs(cfg)["precision"] == "bf16-mixed"
    assert trainer_kwargs(load_config("smoke", ["trainer.accelerator=cpu"]))["precision"] == "32-true"
    assert trainer_kwargs(load_config("smoke", ["trainer.precision=32-true"]))["precision"] == "32-true"
    assert trainer_kwargs(load_config("smoke", ["trainer.devices=2"]))["strategy"] == "ddp"


# ------------------------------------------------------------------------------------- compiled steps
def _fit(compile_on: bool, steps: int = 8) -> tuple[torch.nn.Module, L.Trainer]:
    cfg = small_cfg(critic_warmup_steps=2, eta_ramp_steps=4, eta=0.5, compile=compile_on, compile_backend="aot_eager")
    module = make_module(cfg)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)  # fmt: skip
    torch.manual_seed(1)
    trainer.fit(module, loader(batches(steps)))
    return module, trainer


def test_compiled_update_matches_eager_and_compiles_once_per_q_switch():
    eager, eager_trainer = _fit(False)
    graphs = counters["stats"]["unique_graphs"]
    compiled, trainer = _fit(True)
    # Two graphs: before and after L_q switches on; the ramp of eta (a tensor input) recompiles nothing.
    assert counters["stats"]["unique_graphs"] - graphs == 2 and not counters["graph_break"]
    assert trainer.global_step == 8 and {"train/loss_q", "train/q_mean"} <= set(trainer.callback_metrics)
    assert trainer.callback_metrics["train/eta"].item() == pytest.approx(0.5)
    # aot_eager runs the eager kernels on the traced graph: the same draws and, AdamW's fused kernel aside, the
    # same arithmetic.
    # Attention's key bias is left out: softmax is invariant to it, so its gradient is rounding noise, which AdamW
    # scales up to full-size steps that differ with the CPU's kernels (2e-5 on an AMD EPYC).
    for name, value in eager.state_dict().items():
        other = compiled.state_dict()[name]
        if name.endswith("self_attn.in_proj_bias"):
            width = value.shape[0] // 3
            value, other = torch.cat([value[:width], value[2 * width:]]), torch.cat([other[:width], other[2 * width:]])
        assert torch.allclose(value.float(), other.float(), atol=1e-5), name


@pytest.mark.slow  # three compiling pipeline runs: about 2 minutes on 2 shared cores
def test_compiled_smoke_run_trains_resumes_exactly_and_evaluates(smoke_data_dir, tmp_path, monkeypatch):
    compiled = ["policy.compile=true", "policy.compile_backend=aot_eager", "alignment.enabled=false",
                "eval.seen=true", "eval.unseen=true", "eval.episodes_per_task=1", "eval.max_episode_steps=10"]
    _sigusr1_resume_matches(smoke_data_dir, tmp_path, monkeypatch, stops=[2], extra=compiled)
    assert (tmp_path / "full" / "version_0" / "eval.json").is_file()


@pytest.mark.slow
def test_inductor_compiled_smoke_run_resumes_exactly_and_evaluates(smoke_data_dir, tmp_path, monkeypatch):
    # Stops after step 3 and after step 9, either side of the Q term switching on (critic_warmup_steps=5).
    compiled = ["policy.compile=true", "alignment.max_steps=4", "policy.critic_warmup_steps=5",
                "policy.eta_ramp_steps=4", "eval.seen=true", "eval.unseen=true", "eval.episodes_per_task=1",
                "eval.max_episode_steps=10"]  # fmt: skip
    _sigusr1_resume_matches(smoke_data_dir, tmp_path, monkeypatch, stops=[2, 8], extra=compiled)
    assert (tmp_path / "full" / "version_0" / "eval.json").is_file()


@pytest.mark.slow
def test_ddp_with_compiled_updates_keeps_identical_parameters(smoke_data_dir, tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    overrides = [f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={tmp_path / 'runs'}", "alignment.enabled=false",
                 "eval.seen=false", "eval.unseen=false", "trainer.max_steps=6", "trainer.accelerator=cpu",
                 "trainer.devices=2", "trainer.strategy=ddp", "trainer.enable_progress_bar=false",
                 "trainer.enable_model_summary=false", "policy.compile=true", "policy.compile_backend=aot_eager"]  # fmt: skip
    run_command([sys.executable, str(script), str(tmp_path), *overrides], timeout=600)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [(r["world_size"], r["step"]) for r in ranks] == [(2, 6), (2, 6)]
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"], "both ranks drew the same batches"
    for name, tensor in ranks[0]["state_dict"].items():
        assert torch.equal(tensor, ranks[1]["state_dict"][name]), name

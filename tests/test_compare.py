"""`llmdpd compare`: runs grouped by method, mean ± std over seeds, TensorBoard steps, the bar chart, validation
evaluations, and paired bootstrap differences to a baseline."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmdpd.cli import compare as compare_cli
from llmdpd.evaluation.compare import paired_bootstrap_difference, plan_mismatch
from llmdpd.evaluation.results import write_eval_json

# (method, seed) -> (seen task successes, unseen task successes); split means are the task means.
RUNS = {
    ("llmdpd", 0): ([0.4, 0.6], [0.2]),  # seen 0.5, unseen 0.2
    ("llmdpd", 1): ([0.7, 0.7], [0.4]),  # seen 0.7, unseen 0.4
    ("mlp_bc", 0): ([0.9, 0.9], [0.1]),
    ("mlp_bc", 1): ([1.0, 0.8], [0.3]),
}
STEPS = {"llmdpd": 300, "mlp_bc": 100}


def _eval_json(seed, seen, unseen):
    tasks = {}
    for split, values, names in (("seen", seen, ["reach-v3", "push-v3"]), ("unseen", unseen, ["drawer-open-v3"])):
        for name, value in zip(names, values):
            tasks[name] = {"split": split, "success": value, "final_success": value, "return": 1.0, "episodes": 10}

    def split_entry(values):
        mean = sum(values) / len(values) if values else None
        return {"success_mean": mean, "final_success_mean": mean, "return_mean": 1.0, "tasks": len(values),
                "episodes": 10 * len(values)}

    return {"tasks": tasks, "seen": split_entry(seen), "unseen": split_entry(unseen), "seed": seed,
            "episodes_per_task": 10}


def _make_runs(root):
    from torch.utils.tensorboard import SummaryWriter

    for (method, seed), (seen, unseen) in RUNS.items():
        run = root / method / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"name": method, "seed": seed, "trainer": {"max_steps": 9}}))
        write_eval_json(run / "eval.json", _eval_json(seed, seen, unseen))
        writer = SummaryWriter(str(run / "tb" / "version_0"))
        for step in range(0, STEPS[method] + 1, 50):
            writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_scalar("eval/unseen/success_mean", sum(unseen) / len(unseen), STEPS[method])
        writer.close()
    # A run still training (no eval.json) is skipped.
    unfinished = root / "llmdpd" / "seed2"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(yaml.safe_dump({"name": "llmdpd", "seed": 2}))


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    compare_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", *argv])
    return args.run(args)


def test_compare_table_and_chart(tmp_path, capsys):
    _make_runs(tmp_path / "runs")
    png = tmp_path / "out" / "results.png"
    code = _run_cli([str(tmp_path / "runs" / "llmdpd"), str(tmp_path / "runs" / "mlp_bc"), "--per-task",
                     "--out", str(png)])
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.out.splitlines()
    # std is the sample std over seeds: std(0.5, 0.7) = 0.1414 -> 14.1 %.
    assert lines[0] == ("| method | seeds | seen success (%) | unseen success (%) | episodes (seen/unseen per seed) "
                        "| episodes per task | steps |")
    assert "| llmdpd | 2 | 60.0 ± 14.1 | 30.0 ± 14.1 | 20/10 | 10 | 300 |" in lines
    assert "| mlp_bc | 2 | 90.0 ± 0.0 | 20.0 ± 14.1 | 20/10 | 10 | 100 |" in lines
    assert "| push-v3 | seen | 65.0 ± 7.1 | 85.0 ± 7.1 |" in lines
    assert "| drawer-open-v3 | unseen | 30.0 ± 14.1 | 20.0 ± 14.1 |" in lines
    assert "seed2 (no eval.json yet)" in captured.err

    import matplotlib.pyplot as plt

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = plt.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_compare_one_seed_and_grouping_by_folder(tmp_path, capsys):
    _make_runs(tmp_path / "runs")
    assert _run_cli([str(tmp_path / "runs" / "mlp_bc" / "seed1"), "--group-by", "parent"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| mlp_bc | 1 | 90.0 | 30.0 | 20/10 | 10 | 100 |"
    assert len(lines) == 3
    assert _run_cli([str(tmp_path / "nothing")]) == 1


def test_compare_refuses_two_runs_of_one_method_and_seed(tmp_path, capsys):
    _make_runs(tmp_path / "runs")
    # A copy of llmdpd seed 0 under another folder, its config still named llmdpd.
    _write_run(tmp_path / "runs", "llmdpd_again", 0, _eval_json(0, [0.1, 0.1], [0.0]))
    (tmp_path / "runs" / "llmdpd_again" / "seed0" / "config.yaml").write_text(yaml.safe_dump({"name": "llmdpd", "seed": 0}))
    assert _run_cli([str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the note on the unfinished run
    assert err.startswith("compare: ") and "method 'llmdpd' seed 0" in err
    assert _run_cli([str(tmp_path / "runs"), "--group-by", "parent"]) == 0
    assert "| llmdpd_again | 1 | 10.0 |" in capsys.readouterr().out


def _validation_json(seed, values, episodes_per_task=10):
    tasks = {name: {"split": "validation", "success": value, "final_success": value, "return": 1.0,
                    "episodes": episodes_per_task, "goals": [32 + e % 8 for e in range(episodes_per_task)]}
             for name, value in zip(["reach-v3", "push-v3"], values)}
    mean = sum(values) / len(values)
    empty = {"success_mean": None, "final_success_mean": None, "return_mean": None, "tasks": 0, "episodes": 0}
    return {"tasks": tasks, "seen": empty, "unseen": empty,
            "validation": {"success_mean": mean, "final_success_mean": mean, "return_mean": 1.0,
                           "tasks": len(values), "episodes": episodes_per_task * len(values)},
            "eval_split": "validation", "seed": seed, "episodes_per_task": episodes_per_task}


def _write_run(root, method, seed, summary, name="eval.json"):
    run = root / method / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": method, "seed": seed}))
    write_eval_json(run / name, summary)


def test_compare_by_benchmark_keeps_one_method_scored_two_ways_apart(tmp_path, capsys):
    from llmdpd.evaluation.compare import find_runs

    for benchmark, unseen in (("plain", [0.1]), ("retrieval", [0.3])):
        for seed in (0, 1):
            _write_run(tmp_path / benchmark, "llmdpd", seed, _eval_json(seed, [], unseen))
    runs = find_runs([tmp_path / "plain", tmp_path / "retrieval"], group_by="benchmark")
    assert sorted({r.method for r in runs}) == ["plain/llmdpd", "retrieval/llmdpd"]
    assert {r.method for r in find_runs([tmp_path], group_by="parent")} == {"llmdpd"}
    assert _run_cli([str(tmp_path / "plain"), str(tmp_path / "retrieval"), "--group-by", "benchmark",
                     "--baseline", "plain/llmdpd", "--bootstrap", "100"]) == 0
    assert "| retrieval/llmdpd | unseen | 2 | 1 | +20.0 | [+20.0, +20.0] |" in capsys.readouterr().out


def test_compare_validation_evaluations_show_a_validation_column(tmp_path, capsys):
    for seed, values in ((0, [0.2, 0.4]), (1, [0.4, 0.4])):
        _write_run(tmp_path, "llmdpd", seed, _validation_json(seed, values), "eval_last_validation.json")
    assert _run_cli([str(tmp_path), "--eval-file", "eval_last_validation.json", "--per-task"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| method | seeds | validation success (%) | episodes (validation per seed) "
                        "| episodes per task | steps |")
    assert lines[2] == "| llmdpd | 2 | 35.0 ± 7.1 | 20 | 10 | - |"
    assert "| reach-v3 | validation | 30.0 ± 14.1 |" in lines


def test_paired_bootstrap_difference_on_hand_made_cases():
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, (3, 6))
    assert paired_bootstrap_difference(base, base, 2000, np.random.default_rng(0)) == (0.0, 0.0, 0.0)
    diff, low, high = paired_bootstrap_difference(base + 0.25, base, 2000, np.random.default_rng(0))
    assert diff == pytest.approx(0.25) and low == pytest.approx(0.25) and high == pytest.approx(0.25)
    # Noisy: per-task effects plus seed-level and cell-level noise around a true mean difference of 0.1.
    seeds, tasks = 5, 40
    task_effect = rng.normal(0.1, 0.05, tasks)
    method = base.mean() + rng.normal(0, 0.1, (seeds, tasks))
    baseline = method - task_effect[None, :] - rng.normal(0, 0.05, (seeds, 1)) - rng.normal(0, 0.1, (seeds, tasks))
    diff, low, high = paired_bootstrap_difference(method, baseline, 4000, np.random.default_rng(0))
    assert low < 0.1 < high and low < diff < high and high - low < 0.2
    assert diff == pytest.approx((method - baseline).mean())
    # Reproducible with the same generator seed; one seed still resamples tasks.
    assert paired_bootstrap_difference(method, baseline, 4000, np.random.default_rng(0)) == (diff, low, high)
    one = paired_bootstrap_difference(method[:1], baseline[:1], 1000, np.random.default_rng(0))
    assert one[1] < one[0] < one[2]
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap_difference(method, baseline[:, :3], 10)


def test_compare_baseline_table_pairs_seeds_and_refuses_other_plans(tmp_path, capsys):
    _make_runs(tmp_path / "runs")
    # A third seed only mlp_bc has, and a method evaluated with another number of episodes per task.
    _write_run(tmp_path / "runs", "mlp_bc", 7, _eval_json(7, [1.0, 1.0], [0.0]))
    for seed in (0, 1):
        other = _eval_json(seed, [0.5, 0.5], [0.5])
        other["episodes_per_task"] = 20
        _write_run(tmp_path / "runs", "more_episodes", seed, other)
    argv = [str(tmp_path / "runs"), "--baseline", "llmdpd", "--bootstrap", "2000"]
    assert _run_cli(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith("Paired bootstrap against llmdpd: method minus llmdpd in success points, 95 %")
               for line in lines)
    assert "| method | split | paired seeds | tasks | difference (points) | 95 % interval | by seed |" in lines
    rows = _bootstrap_rows(lines)
    # mlp_bc minus llmdpd over seeds 0 and 1: seen (0.9 + 0.9) / 2 - (0.5 + 0.7) / 2 = +30 points, +40 on seed 0
    # (0.9 - 0.5) and +20 on seed 1 (0.9 - 0.7).
    seen, unseen = rows["mlp_bc", "seen"], rows["mlp_bc", "unseen"]
    assert seen[:3] == (2, 2, 30.0) and seen[3] <= 30.0 <= seen[4] and seen[5] == (40.0, 20.0)
    assert unseen[:3] == (2, 1, -10.0) and unseen[3] <= -10.0 <= unseen[4] and unseen[5] == (-10.0, -10.0)
    assert "mlp_bc vs llmdpd: 2 paired seeds; seeds 7 left out (not in both)" in lines
    assert not any(key[0] == "more_episodes" for key in rows)
    assert any(line.startswith("more_episodes vs llmdpd: refused, the evaluations ran different episode plans")
               and "episodes per task 10 vs 20" in line for line in lines)
    assert _run_cli(argv) == 0 and capsys.readouterr().out == out  # reproducible
    assert _run_cli([str(tmp_path / "runs"), "--baseline", "nobody"]) == 2
    assert "baseline 'nobody' is not among the methods" in capsys.readouterr().err
    assert _run_cli([str(tmp_path / "runs"), "--bootstrap", "100"]) == 2


def test_an_evaluation_of_the_unseen_tasks_alone_pairs_with_a_whole_one_there(tmp_path, capsys):
    _make_runs(tmp_path / "runs")
    for seed, unseen in ((0, 0.6), (1, 0.2)):  # llmdpd's unseen tasks only, as another prompt rule scores them
        _write_run(tmp_path / "runs", "unseen_only", seed, _eval_json(seed, [], [unseen]))
    assert _run_cli([str(tmp_path / "runs"), "--baseline", "llmdpd", "--bootstrap", "500"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if re.match(r"\| unseen_only \| (un)?seen \|", line)]
    # unseen: (0.6 + 0.2) / 2 - (0.2 + 0.4) / 2 = +10 points; no seen tasks to pair with
    assert len(rows) == 1 and rows[0].startswith("| unseen_only | unseen | 2 | 1 | +10.0 |")
    assert "| unseen_only | 2 | - | 40.0 ± 28.3 | 0/10 | 10 | - |" in lines
    assert "unseen_only vs llmdpd: not paired on seen (unseen_only has no seen tasks)" in lines
    for seed in (0, 1):  # one seen task fewer: the seen plans differ, the unseen ones still pair
        fewer = _eval_json(seed, [0.5, 0.5], [0.5])
        del fewer["tasks"]["push-v3"]
        _write_run(tmp_path / "runs", "fewer_seen", seed, fewer)
    assert _run_cli([str(tmp_path / "runs"), "--baseline", "llmdpd", "--bootstrap", "500"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if re.match(r"\| fewer_seen \| (un)?seen \|", line)] == [
        "| fewer_seen | unseen | 2 | 1 | +20.0 | [+10.0, +30.0] | +30.0 / +10.0 |"]
    assert any(line.startswith("fewer_seen vs llmdpd: refused on seen, the evaluations ran different episode plans")
               and "only in the first: push-v3" in line for line in lines)
    assert plan_mismatch(_eval_json(0, [0.1, 0.2], [0.3]), _eval_json(0, [], [0.5]), "unseen") is None
    assert "only in the first" in plan_mismatch(_eval_json(0, [0.1, 0.2], [0.3]), _eval_json(0, [], [0.5]))


def test_plan_mismatch_names_the_difference():
    a = _eval_json(0, [0.1, 0.2], [0.3])
    assert plan_mismatch(a, _eval_json(1, [0.5, 0.5], [0.5])) is None
    b = _eval_json(0, [0.1, 0.2], [0.3])
    del b["tasks"]["push-v3"]
    assert "only in the first: push-v3" in plan_mismatch(a, b)
    c, d = _eval_json(0, [0.1, 0.2], [0.3]), _eval_json(0, [0.1, 0.2], [0.3])
    c["tasks"]["reach-v3"]["goals"], d["tasks"]["reach-v3"]["goals"] = [40, 41], [41, 40]
    assert "different goal variations" in plan_mismatch(c, d)


def test_comparison_lists_only_runs_without_results(tmp_path, capsys):
    from llmdpd.cli.main import main

    done = tmp_path / "results" / "ml10" / "mlp_bc" / "seed0"
    done.mkdir(parents=True)
    (done / "eval.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        main(["comparison", "ml10", "mlp_bc", "llmdpd", "--seeds", "0", "1", "--results", str(tmp_path / "results"), "--dry-run"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "3 run(s) to do: llmdpd/seed0, mlp_bc/seed1, llmdpd/seed1" in out


def test_comparison_names_an_unknown_method(tmp_path, capsys):
    from llmdpd.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["comparison", "ml45", "text_only", "--results", str(tmp_path), "--dry-run"])
    assert exit_.value.code == 2 and "text_only" in capsys.readouterr().err


def test_compare_counts_the_newest_finished_version_of_each_seed(tmp_path, capsys):
    from llmdpd.evaluation.compare import find_runs

    base = tmp_path / "runs" / "llmdpd" / "seed0"
    for version, success in ((0, 0.1), (1, 0.9)):
        run = base / f"version_{version}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"name": "llmdpd", "seed": 0}))
        write_eval_json(run / "eval.json", _eval_json(0, [success, success], [success]))
    unfinished = base / "version_2"  # still training: the newest finished version counts
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(yaml.safe_dump({"name": "llmdpd", "seed": 0}))
    runs = find_runs([tmp_path / "runs" / "llmdpd"], group_by="parent")
    assert [(r.path.name, r.method, r.summary["seen"]["success_mean"]) for r in runs] == [("version_1", "llmdpd", 0.9)]
    # A version named on the command line is taken as it is.
    assert [r.path.name for r in find_runs([base / "version_0", base / "version_1"])] == ["version_0", "version_1"]


def test_comparison_copies_from_the_run_that_ckpt_last_continued(tmp_path, monkeypatch, capsys):
    from llmdpd.cli import comparison
    from llmdpd.cli.main import main

    runs, results = tmp_path / "runs", tmp_path / "results"
    monkeypatch.chdir(tmp_path)  # the experiments' paths.runs_dir is runs/
    base = runs / "mlp_bc" / "seed0"
    old = base / "version_0"  # an earlier, finished run of the same experiment and seed
    old.mkdir(parents=True)
    (old / "config.yaml").write_text("name: mlp_bc\nnote: old\n")
    write_eval_json(old / "eval.json", _eval_json(0, [0.1, 0.1], [0.1]))
    calls = []

    def fake_train(command, env):  # `llmdpd train mlp_bc seed=0 ckpt=last ...` continues the newest run
        calls.append(command)
        new = base / "version_1"
        new.mkdir()
        (new / "config.yaml").write_text("name: mlp_bc\nnote: new\n")
        (new / "provenance.json").write_text('[{"command": "llmdpd train mlp_bc seed=0 ckpt=last"}]')
        write_eval_json(new / "eval.json", _eval_json(0, [0.9, 0.9], [0.9]))
        return 0

    monkeypatch.setattr(comparison.subprocess, "call", fake_train)
    monkeypatch.setitem(comparison.COMPARISONS, "ml10", {"mlp_bc": "mlp_bc"})
    with pytest.raises(SystemExit) as exit_:
        main(["comparison", "ml10", "mlp_bc", "--seeds", "0", "--results", str(results)])
    assert exit_.value.code == 0, capsys.readouterr().err
    target = results / "ml10" / "mlp_bc" / "seed0"
    assert (target / "config.yaml").read_text() == "name: mlp_bc\nnote: new\n"
    assert json.loads((target / "provenance.json").read_text())[0]["command"].endswith("ckpt=last")
    assert "ckpt=last" in calls[0]


def test_an_evaluation_benchmark_scores_finished_runs_without_touching_their_results(tmp_path, monkeypatch, capsys):
    from llmdpd.cli import comparison
    from llmdpd.cli.main import main

    runs, results = tmp_path / "runs", tmp_path / "results"
    monkeypatch.chdir(tmp_path)
    finished = runs / "mlp_bc" / "seed0" / "version_0"
    finished.mkdir(parents=True)
    (finished / "config.yaml").write_text("name: mlp_bc\ndata:\n  split: ml10\neval:\n  seen: true\n")
    (finished / "provenance.json").write_text('[{"command": "llmdpd train mlp_bc seed=0"}]')
    own = _eval_json(0, [0.5, 0.5], [0.5])
    write_eval_json(finished / "eval.json", own)
    calls = []

    def fake_llmdpd(command, env):  # `llmdpd eval ... --out FILE` writes FILE; a finished run is never retrained
        calls.append(command[3:])
        write_eval_json(Path(command[command.index("--out") + 1]), _eval_json(0, [], [0.2, 0.4]))
        return 0

    monkeypatch.setattr(comparison.subprocess, "call", fake_llmdpd)
    monkeypatch.setitem(comparison.COMPARISONS, "wide", {"mlp_bc": "mlp_bc"})
    monkeypatch.setitem(comparison.EVALUATIONS, "wide", ("ml10", ["data.split=ml10_unseen37", "eval.seen=false"]))
    with pytest.raises(SystemExit) as exit_:
        main(["comparison", "wide", "mlp_bc", "--seeds", "0", "--results", str(results)])
    assert exit_.value.code == 0, capsys.readouterr().err
    assert [c[0] for c in calls] == ["eval"] and "data.split=ml10_unseen37" in calls[0]
    target = results / "wide" / "mlp_bc" / "seed0"
    assert json.loads((target / "eval.json").read_text())["unseen"]["success_mean"] == pytest.approx(0.3)
    config = yaml.safe_load((target / "config.yaml").read_text())
    assert config["data"]["split"] == "ml10_unseen37" and config["eval"]["seen"] is False
    assert json.loads((finished / "eval.json").read_text()) == json.loads(json.dumps(own))  # its own results kept
    assert (finished / "eval_wide.json").is_file()
    # The training's provenance entries and this evaluation's, which names the evaluation's overrides.
    entries = json.loads((target / "provenance.json").read_text())
    assert [entry["command"].split()[1] for entry in entries] == ["train", "eval"]
    assert "data.split=ml10_unseen37" in entries[1]["command"] and "torch" in entries[1]["libraries"]


MUJOCO = ["mujoco/halfcheetah/medium-v0", "mujoco/hopper/medium-v0"]


def _minari_json(seed, returns, normalized=None):
    """eval.json of a test evaluation on environments that report no success (`success: null`): a return per
    seen task and, for datasets with reference scores, a normalised return."""
    tasks = {}
    for k, (name, value) in enumerate(zip(MUJOCO, returns)):
        tasks[name] = {"split": "seen", "success": None, "final_success": None, "return": value, "episodes": 5,
                       "goals": [0, 1, 2, 3, 4]}
        if normalized is not None:
            tasks[name]["normalized_return"] = normalized[k]
    empty = {"success_mean": None, "final_success_mean": None, "return_mean": None, "tasks": 0, "episodes": 0}
    seen = {"success_mean": None, "final_success_mean": None, "return_mean": sum(returns) / len(returns),
            "tasks": len(returns), "episodes": 5 * len(returns)}
    return {"tasks": tasks, "seen": seen, "unseen": empty, "validation": empty, "eval_split": "test", "seed": seed,
            "episodes_per_task": 5}


# (method, seed) -> (returns, normalised returns) of the two MUJOCO tasks.
MINARI_RUNS = {
    ("iql", 0): ([4000.0, 2000.0], [45.5, 60.0]),  # seen mean: return 3000, normalised 52.75
    ("iql", 1): ([5000.0, 3000.0], [50.5, 70.0]),  # 4000, 60.25
    ("bc", 0): ([3000.0, 1000.0], [30.0, 40.25]),  # 2000, 35.125
    ("bc", 1): ([3500.0, 1500.0], [35.0, 44.75]),  # 2500, 39.875
}


def _write_minari_runs(root, normalized=True, methods=("iql", "bc")):
    for (method, seed), (returns, scores) in MINARI_RUNS.items():
        if method in methods:
            _write_run(root, method, seed, _minari_json(seed, returns, scores if normalized else None))


def _bootstrap_rows(lines):
    """{(method, split): (paired seeds, tasks, difference, low, high, (difference per seed, ...))} from the
    bootstrap table's lines."""
    rows = {}
    number = r"([+-]\d+\.\d)"
    for line in lines:
        match = re.fullmatch(
            rf"\| (\S+) \| (\S+) \| (\d+) \| (\d+) \| {number} \| \[{number}, {number}\] \| ([-+\d. /]+) \|", line
        )
        if match:
            by_seed = tuple(float(value) for value in match[8].split(" / "))
            rows[match[1], match[2]] = (int(match[3]), int(match[4]), *map(float, match.groups()[4:7]), by_seed)
    return rows


def test_compare_runs_without_success_use_the_return(tmp_path, capsys):
    _write_minari_runs(tmp_path / "runs", normalized=False)
    png = tmp_path / "returns.png"
    assert _run_cli([str(tmp_path / "runs"), "--per-task", "--baseline", "bc", "--bootstrap", "2000",
                     "--out", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()  # methods in path order: bc, iql
    assert lines[0] == "| method | seeds | seen return | episodes (seen per seed) | episodes per task | steps |"
    # iql: split means 3000 and 4000 -> 3500 ± 707.1 (sample std); bc: 2000 and 2500 -> 2250 ± 353.6.
    assert "| iql | 2 | 3500.0 ± 707.1 | 10 | 5 | - |" in lines
    assert "| bc | 2 | 2250.0 ± 353.6 | 10 | 5 | - |" in lines
    assert "| mujoco/halfcheetah/medium-v0 | seen | 3250.0 ± 353.6 | 4500.0 ± 707.1 |" in lines
    assert "| mujoco/hopper/medium-v0 | seen | 1250.0 ± 353.6 | 2500.0 ± 707.1 |" in lines
    assert any(line.startswith("Paired bootstrap against bc: method minus bc in return, 95 %") for line in lines)
    assert "| method | split | paired seeds | tasks | difference (return) | 95 % interval | by seed |" in lines
    # iql minus bc over (seed, task) cells: (1000 + 1000 + 1500 + 1500) / 4 = +1250.
    seeds, tasks, diff, low, high, _ = _bootstrap_rows(lines)["iql", "seen"]
    assert (seeds, tasks, diff) == (2, 2, 1250.0) and low <= diff <= high
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_prefers_the_normalised_return_and_refuses_success(tmp_path, capsys):
    from llmdpd.cli.main import main

    _write_minari_runs(tmp_path / "runs")
    assert _run_cli([str(tmp_path / "runs"), "--baseline", "bc", "--bootstrap", "2000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| method | seeds | seen normalised return | episodes (seen per seed) | episodes per task "
                        "| steps |")
    # Split values are the task means (eval.json has no normalized_return_mean): iql 52.75 and 60.25.
    assert "| iql | 2 | 56.5 ± 5.3 | 10 | 5 | - |" in lines
    assert "| bc | 2 | 37.5 ± 3.4 | 10 | 5 | - |" in lines
    assert any(line.startswith("Paired bootstrap against bc: method minus bc in normalised return, 95 %")
               for line in lines)
    assert ("| method | split | paired seeds | tasks | difference (normalised return) | 95 % interval | by seed |"
            in lines)
    # (45.5 - 30) + (60 - 40.25) + (50.5 - 35) + (70 - 44.75) = 76 over 4 cells: +19.
    seeds, tasks, diff, low, high, _ = _bootstrap_rows(lines)["iql", "seen"]
    assert (seeds, tasks, diff) == (2, 2, 19.0) and low <= diff <= high
    # The raw return on request.
    assert _run_cli([str(tmp_path / "runs"), "--metric", "return"]) == 0
    assert "| iql | 2 | 3500.0 ± 707.1 | 10 | 5 | - |" in capsys.readouterr().out.splitlines()
    # Success that no run reports: one line, exit 2.
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(tmp_path / "runs"), "--metric", "success"])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "no run has a success value" in captured.err


def test_compare_runs_lacking_the_metric_show_dashes_and_are_not_paired(tmp_path, capsys):
    # iql has reference scores, bc not: the comparison is on the normalised return, bc has none.
    _write_minari_runs(tmp_path / "runs", methods=("iql",))
    _write_minari_runs(tmp_path / "runs", normalized=False, methods=("bc",))
    assert _run_cli([str(tmp_path / "runs"), "--per-task", "--baseline", "iql", "--bootstrap", "100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| method | seeds | seen normalised return |")
    assert "| iql | 2 | 56.5 ± 5.3 | 10 | 5 | - |" in lines
    assert "| bc | 2 | - | 10 | 5 | - |" in lines
    assert "| mujoco/halfcheetah/medium-v0 | seen | - | 48.0 ± 3.5 |" in lines
    assert not _bootstrap_rows(lines)
    assert "bc vs iql: refused, bc seed 0 has no normalized_return for mujoco/halfcheetah/medium-v0" in lines
    # Success-reporting runs beside them: the comparison is on success, the Minari runs show '-'.
    _make_runs(tmp_path / "runs")
    assert _run_cli([str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| method | seeds | seen success (%) | unseen success (%) |")
    assert "| llmdpd | 2 | 60.0 ± 14.1 | 30.0 ± 14.1 | 20/10 | 10 | 300 |" in lines
    assert "| iql | 2 | - | - | 10/0 | 5 | - |" in lines


def _fold_json(seed, successes, episodes_per_task=10):
    tasks = {task: {"split": "unseen", "success": value, "final_success": value, "return": 1.0,
                    "episodes": episodes_per_task} for task, value in successes.items()}
    from llmdpd.evaluation.results import split_summaries

    return {"tasks": tasks, **split_summaries(tasks), "eval_split": "test", "seed": seed,
            "episodes_per_task": episodes_per_task}


def test_compare_pools_the_folds_of_a_benchmark(tmp_path, capsys):
    # Two folds, each holding out other tasks; one method's seed scored 2 tasks in fold 1 and 3 in fold 2.
    folds = {
        "fold1": {("llmdpd", 0): {"a": 1.0, "b": 0.5}, ("llmdpd", 1): {"a": 0.5, "b": 0.5},
                  ("mlp", 0): {"a": 0.0, "b": 0.5}, ("mlp", 1): {"a": 0.5, "b": 0.0}},
        "fold2": {("llmdpd", 0): {"c": 0.0, "d": 1.0, "e": 1.0}, ("llmdpd", 1): {"c": 1.0, "d": 0.0, "e": 0.0},
                  ("mlp", 0): {"c": 0.0, "d": 0.0, "e": 0.5}, ("mlp", 1): {"c": 0.5, "d": 0.0, "e": 0.0}},
    }
    for fold, runs in folds.items():
        for (method, seed), successes in runs.items():
            _write_run(tmp_path / fold, method, seed, _fold_json(seed, successes))
    paths = [str(tmp_path / "fold1"), str(tmp_path / "fold2")]
    # Without --pool the two folds' runs of one seed count twice: refused.
    assert _run_cli([*paths, "--group-by", "parent"]) == 2
    assert "method 'llmdpd' seed 0" in capsys.readouterr().err
    assert _run_cli([*paths, "--group-by", "parent", "--pool", "--per-task", "--baseline", "llmdpd"]) == 0
    out = capsys.readouterr().out
    # Seed 0: (1 + .5 + 0 + 1 + 1) / 5 = 70 %; seed 1: (.5 + .5 + 1) / 5 = 40 %; each task weighs the same.
    assert "| llmdpd | 2 | 55.0 ± 21.2 | 50 | 10 | - |" in out
    assert "| mlp | 2 | 20.0 ± 0.0 | 50 | 10 | - |" in out
    assert "| e | unseen | 50.0 ± 70.7 | 25.0 ± 35.4 |" in out
    assert re.search(r"\| mlp \| unseen \| 2 \| 5 \| -35\.0 \|", out)

    # A seed whose second fold is missing is pooled over fewer tasks, and compare says so.
    (tmp_path / "fold2" / "mlp" / "seed1" / "eval.json").unlink()
    assert _run_cli([*paths, "--group-by", "parent", "--pool"]) == 0
    assert "method 'mlp' covers different tasks by seed (seed 0: 5 tasks, seed 1: 2 tasks)" in capsys.readouterr().err
    write_eval_json(tmp_path / "fold2" / "mlp" / "seed1" / "eval.json", _fold_json(1, folds["fold2"][("mlp", 1)]))

    # A task scored in two folds is refused with one line naming the run.
    _write_run(tmp_path / "fold3", "llmdpd", 0, _fold_json(0, {"a": 0.0}))
    assert _run_cli([*paths, str(tmp_path / "fold3"), "--group-by", "parent", "--pool"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compare: cannot pool") and "also scored a" in err and "\n" not in err
    # So are folds evaluated with different episodes per task.
    _write_run(tmp_path / "fold4", "mlp", 0, _fold_json(0, {"f": 0.0}, episodes_per_task=20))
    assert _run_cli([*paths, str(tmp_path / "fold4"), "--group-by", "parent", "--pool"]) == 2
    assert "episodes_per_task 20 vs 10" in capsys.readouterr().err


def test_per_seed_table_names_the_prompt_each_rule_chose(tmp_path, capsys):
    own = {0: {"a": 0.5, "b": 0.0}, 1: {"a": 1.0, "b": 0.25}}
    for seed, successes in own.items():
        _write_run(tmp_path / "own", "llmdpd", seed, _fold_json(seed, successes))
    retrieved = _fold_json(0, {"a": 0.75, "b": 0.5})
    retrieved["prompt_retrieval"] = {"a": {"rule": "imagined", "chosen": "a"}, "b": {"rule": "imagined",
                                                                                   "chosen": "push-v3"}}
    _write_run(tmp_path / "imagined", "llmdpd", 0, retrieved)
    assert _run_cli([str(tmp_path / "own"), str(tmp_path / "imagined"), "--group-by", "benchmark",
                     "--per-seed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("| seed | task | split | imagined/llmdpd | own/llmdpd |")
    assert lines[start + 2:] == [
        "| 0 | a | unseen | 75.0 (own) | 50.0 |",
        "| 0 | b | unseen | 50.0 (push-v3) | 0.0 |",
        "| 1 | a | unseen | - | 100.0 |",  # the retrieval rule has no seed-1 run
        "| 1 | b | unseen | - | 25.0 |",
    ]

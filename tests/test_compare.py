"""`llmdpd compare`: runs grouped by method, mean ± std over seeds, TensorBoard steps, the bar chart."""

from __future__ import annotations

import argparse

import yaml

from llmdpd.cli import compare as compare_cli
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
        mean = sum(values) / len(values)
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
    assert "| llmdpd | 2 | 60.0 ± 14.1 | 30.0 ± 14.1 | 20/10 | 300 |" in lines
    assert "| mlp_bc | 2 | 90.0 ± 0.0 | 20.0 ± 14.1 | 20/10 | 100 |" in lines
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
    assert lines[2] == "| mlp_bc | 1 | 90.0 | 30.0 | 20/10 | 100 |"
    assert len(lines) == 3
    assert _run_cli([str(tmp_path / "nothing")]) == 1

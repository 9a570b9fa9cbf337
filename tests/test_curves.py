"""`gr-vl curves`: metrics files written by verl's own file logger, drawn as one PNG of overlaid runs."""

import io
import json

import pytest
from PIL import Image

from gr_vl_verl.charts.training import curves_figure, panels_with_data
from gr_vl_verl.cli import main
from gr_vl_verl.trainer.metrics_file import read_run


def verl_log(path, steps, monkeypatch):
    """A metrics file as verl 0.9.1's ``FileLogger`` writes it (``trainer.logger=[file]``)."""
    from verl.utils.tracking import FileLogger

    path.parent.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("gr_vl", "test")
    for step, data in steps:
        logger.log(data, step)
    logger.finish()
    return path


def grpo_steps(n, sign):
    return [(s, {"critic/score/mean": -1 + sign * 0.1 * s, "reward/acc/mean": 0.5 + sign * 0.05 * s,
                 "reward/format/mean": 1.0, "response_length/mean": 80.0 - s, "actor/clip_eps_low": 0.2 * (n - s) / n,
                 "actor/loss_clip_low": 0.2 * (n - s) / n, "actor/pg_loss": 0.01 * s, "actor/entropy": 1.0 / s})
            for s in range(1, n + 1)]  # fmt: skip


def test_two_grpo_runs_and_an_sft_run_in_one_figure(tmp_path, monkeypatch, capsys):
    a = verl_log(tmp_path / "a" / "grpo_metrics.jsonl", grpo_steps(4, 1), monkeypatch)
    verl_log(tmp_path / "b" / "grpo_metrics.jsonl", grpo_steps(6, -1), monkeypatch)
    sft = verl_log(tmp_path / "sft_metrics.jsonl", [(s, {"train/loss": 5.0 / s}) for s in range(1, 9)], monkeypatch)
    out = tmp_path / "fig" / "curves.png"
    assert main(["curves", str(a), str(tmp_path / "b"), str(sft), "--out", str(out), "--labels", "A", "B", "SFT"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["runs"] == {"A": 4, "B": 6, "SFT": 8}
    assert summary["panels"] == ["Reward (mean score)", "Accuracy and format rate", "Response length (tokens)",
                                 "Clip range ε", "Policy loss", "Entropy", "SFT loss"]  # fmt: skip
    img = Image.open(io.BytesIO(out.read_bytes()))
    assert img.format == "PNG" and img.size == (3 * 440, 3 * 310)  # 7 panels: 3 columns x 3 rows at 100 dpi


def test_several_runs_get_one_legend_of_runs_and_panels_name_only_their_metrics():
    a, b = dict(grpo_steps(4, 1)), dict(grpo_steps(4, -1))
    b[3] = {**b[3], "critic/score/mean": -36864.0}  # one outlier step (a near-empty answer under the Eco reward)
    fig = curves_figure([a, b], ["GRPO", "Eco"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["GRPO", "Eco"]  # the runs, once, by colour
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    accuracy = panels["Accuracy and format rate"].get_legend()
    assert [t.get_text() for t in accuracy.get_texts()] == ["acc", "format"]  # metrics by style, not run x metric
    assert panels["Policy loss"].get_legend() is None  # one metric: the runs' legend says it all
    # the outlier would flatten the other lines: that panel only is on a symmetric log scale
    assert panels["Reward (mean score) (symlog)"].get_yscale() == "symlog"
    assert panels["Entropy"].get_yscale() == "linear"
    single = curves_figure([a], ["GRPO"])
    assert not single.legends  # one run: each panel's legend names its metrics by colour
    assert [t.get_text() for t in single.axes[1].get_legend().get_texts()] == ["acc", "format"]


def test_a_resumed_run_merges_its_files_and_a_half_written_line_is_left_out(tmp_path, monkeypatch):
    verl_log(tmp_path / "run" / "metrics_1.jsonl", grpo_steps(4, 1)[:3], monkeypatch)
    second = verl_log(tmp_path / "run" / "metrics_2.jsonl", grpo_steps(4, 1)[2:], monkeypatch)
    with second.open("ab") as fh:
        fh.write(b'{"step": 5, "data": {"critic/sc')  # a trainer still writing
    steps = read_run(tmp_path / "run")
    assert sorted(steps) == [1, 2, 3, 4]
    assert steps[4]["actor/clip_eps_low"] == pytest.approx(0.0)
    assert [t for t, _ in panels_with_data([steps])][0] == "Reward (mean score)"


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad_metrics.jsonl"
    bad.write_text('{"step": 1, "data": {"a": 1}}\nnot json\n{"step": 2, "data": {"a": 2}}\n')
    assert main(["curves", str(bad), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: not a verl metrics line" in err and "Traceback" not in err
    assert main(["curves", str(tmp_path), "--out", str(tmp_path / "c.png"), "--labels", "x", "y"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["curves", str(empty), "--out", str(tmp_path / "c.png")]) == 2
    assert "no metrics file" in capsys.readouterr().err
    other = tmp_path / "other_metrics.jsonl"
    other.write_text('{"step": 1, "data": {"something/else": 1.0}}\n')
    assert main(["curves", str(other), "--out", str(tmp_path / "c.png")]) == 1
    assert "no run has any of the metrics" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()

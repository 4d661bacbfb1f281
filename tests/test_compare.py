"""ginformer compare from scratch (the protein task): config validation, summary maths by hand, and an end-to-end
comparison of two tiny variants × two seeds that writes the summary and the figures, then reuses its finished
runs and resumes an unfinished one. Fine-tuning comparisons: test_finetune.py; text: test_text.py."""

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import matplotlib.image
import pytest
import yaml

import ginformer.runs.compare
import ginformer.runs.evaluate
from ginformer.cli import main
from ginformer.data.tokenizer import build_protein_tokenizer
from ginformer.runs.compare import DEMO_CONFIG, pending_runs, run_comparison
from ginformer.runs.compare_config import compare_settings_from_dict, load_compare_settings, variant_parameters
from ginformer.runs.report import summary_table
from ginformer.runs.run_dir import RunDir
from ginformer.runs.summary import choose_point, format_mean_std, mean_std, run_summary
from ginformer.runs.config import bundled_config
from ginformer.runs.models import MODEL_SIDES
from ginformer.errors import ConfigError
from ginformer.tasks.protein import ProteinTask
from ginformer.sizing import count_parameters

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TINY_BASE = {  # short proteins and few steps keep four runs within seconds
    "model": {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
    "data": {"max_length": 48, "max_train_examples": 8, "max_val_examples": 4},
    "training": {
        "max_steps": 2, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
        "gradient_accumulation_steps": 1, "warmup_steps": 1, "learning_rate": 1.0e-3,
        "logging_steps": 1, "eval_steps": 1, "save_steps": 2,
    },
}


def tiny_config(root: Path, **changes) -> dict:
    config = {
        "name": "tiny_compare",
        "seeds": [3, 4],
        "target_params": 40_000,
        "variants": {"gin_half": {"gin_mlp_multiplier": 0.5}, "gin_two": {"gin_mlp_multiplier": 2.0}},
        **{section: dict(values) for section, values in TINY_BASE.items()},
    }
    config["training"]["output_root"] = str(root)
    config.update(changes)
    return config


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": [1]}, "unknown key: 'seed' \\(did you mean 'seeds'\\?\\)"),
        ({"seeds": []}, "seeds=\\[\\] is not allowed"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"target_params": 0}, "target_params=0 is not allowed"),
        ({"baseline": True}, "baseline=True is not allowed"),
        ({"evaluate": {"generate": 3}}, "evaluate: --generate does not apply to a protein run"),
        ({"name": "a/b"}, "name='a/b' is not allowed"),
        ({"variants": {}}, "variants=\\{\\} is not allowed: expected a non-empty mapping"),
        ({"variants": {"gin": {"gin_mlp_multipler": 2}}}, "variant 'gin': unknown key in 'model': "
                                                           "'model.gin_mlp_multipler' \\(did you mean"),
        ({"variants": {"gin": {"target_params": 5}}}, "variant 'gin': target_params is the comparison's"),
        ({"variants": {"gin": {"attention_kind": "gcn"}}}, "variant 'gin': .*attention_kind"),
        ({"training": {"seed": 5}}, "training.seed cannot be set in a compare config: set `seeds`"),
        ({"training": {"run_name": "x"}}, "training.run_name cannot be set"),
        ({"training": {"max_steps": 5, "logging_steps": 1, "eval_steps": 10}}, "eval_steps=10 exceeds"),
    ],
)
def test_bad_compare_configs_name_the_problem(tmp_path, change, message):
    config = tiny_config(tmp_path)
    config.update(change)
    with pytest.raises(ConfigError, match=message):
        compare_settings_from_dict(config)


def test_missing_keys_and_overrides(tmp_path):
    config = tiny_config(tmp_path)
    del config["seeds"]
    with pytest.raises(ConfigError, match="config misses seeds; it needs name, seeds, variants"):
        compare_settings_from_dict(config)
    settings = compare_settings_from_dict(tiny_config(tmp_path), ["training.max_steps=9"])
    run = settings.run_settings("gin_two", 4)
    assert (run.training.max_steps, run.training.seed, run.model.gin_mlp_multiplier) == (9, 4, 2.0)
    assert run.run_dir == tmp_path / "tiny_compare" / "gin_two" / "seed4"
    smaller = compare_settings_from_dict(tiny_config(tmp_path), ["seeds=[7]", "target_params=30000",
                                                                 "variants.gin_two.gin_mlp_multiplier=4"])
    assert (smaller.seeds, smaller.target_params) == ([7], 30_000)  # the compare config's own keys too
    assert smaller.run_settings("gin_two", 7).model.gin_mlp_multiplier == 4.0


def test_variants_are_sized_to_the_same_parameter_count(tmp_path):
    variants = {"reference": {"attention_kind": "standard"}, "gin": {"attention_kind": "gin"}}
    config = tiny_config(tmp_path, variants=variants)
    settings = compare_settings_from_dict(config)
    sizes = variant_parameters(settings)
    tokenizer = build_protein_tokenizer()
    for variant, (parameters, hidden_size) in sizes.items():
        built = MODEL_SIDES["scratch"].build(settings.run_settings(variant, 3).model, tokenizer)  # what trains
        assert (count_parameters(built.model), built.model.config.hidden_size) == (parameters, hidden_size)
        assert abs(parameters - 40_000) <= 0.05 * 40_000


def test_mean_std_and_format_by_hand():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))  # sample deviation: Σ(x − 2.5)² / 3
    assert mean_std([7.0]) == (7.0, 0.0)
    assert format_mean_std([1.0, 2.0, 3.0, 4.0], ".2f") == "2.50 ± 1.29"
    assert format_mean_std([7.0], ".2f") == "7.00"


def synthetic_metrics(val_losses, train_losses, runtime=12.5, sharpening=(1.2, 0.8)):
    events = [{"event": "start", "step": 0, "epoch": 0.0, "parameters": 1000, "hidden_size": 16}]
    for step, loss in train_losses:
        events.append({"event": "train", "step": step, "epoch": 0.1, "train_loss": loss, "graph": {}})
    for step, loss in val_losses:
        events.append({"event": "eval", "step": step, "epoch": 0.1, "val_loss": loss,
                       "val_perplexity": math.exp(loss), "graph": {"sharpening": list(sharpening)}})
    events.append({"event": "end", "step": max(s for s, _ in val_losses), "epoch": 1.0, "train_runtime": runtime})
    return events


EVALUATION = {"scores": {"primary": 0.5, "secondary": 0.25, "both": 0.25, "non_label": 0.0}}


def test_run_summary_by_hand():
    metrics = synthetic_metrics(
        val_losses=[(10, 2.5), (20, 2.0), (30, 2.2)], train_losses=[(10, 2.6), (20, 1.5), (30, 1.6)]
    )
    run = run_summary("gin", 7, metrics, EVALUATION)
    assert run.min_val_loss == 2.0 and run.best_step == 20
    assert run.min_val_perplexity == pytest.approx(math.exp(2.0))
    assert run.min_train_loss == 1.5
    assert run.gap == pytest.approx(0.5) and run.ratio == pytest.approx(0.75)
    assert (run.scores["primary"], run.scores["both"], run.wall_time_s, run.steps) == (0.5, 0.25, 12.5, 30)
    assert (run.final_val_perplexity, run.final_train_loss, run.parameters) == (math.exp(2.2), 1.6, 1000)
    assert run.graph == {"sharpening": [(10, [1.2, 0.8]), (20, [1.2, 0.8]), (30, [1.2, 0.8])]}
    with pytest.raises(ValueError, match="metrics need a start event, train events and eval events"):
        run_summary("gin", 7, [e for e in metrics if e["event"] != "eval"], EVALUATION)


def test_summary_table_means_over_seeds_and_the_baseline_row():
    runs = [
        run_summary("gin", 0, synthetic_metrics([(10, 2.0)], [(10, 1.0)]), EVALUATION),
        run_summary("gin", 1, synthetic_metrics([(10, 3.0)], [(10, 2.0)]), EVALUATION),
    ]
    table = summary_table(runs, ProteinTask.columns,
                          {"min_val_perplexity": 19.5, "primary": 0.4, "secondary": 0.6, "both": 0.3})
    gin_row, baseline_row = table.splitlines()[2:]
    ppl_mean, ppl_std = statistics.fmean([math.exp(2), math.exp(3)]), statistics.stdev([math.exp(2), math.exp(3)])
    assert f"{ppl_mean:.3f} ± {ppl_std:.3f}" in gin_row and "| 0,1 " in gin_row
    assert "1.0000 ± 0.0000" in gin_row  # the gap is 1.0 for both seeds
    assert "19.500" in baseline_row and "0.400" in baseline_row


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def refuse_to_reread(path):
    raise AssertionError(f"{path} was read again")


@pytest.mark.slow  # tens of seconds on 2 cores: runs in CI (make test-all)
def test_compare_end_to_end_writes_summary_and_figures_then_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    config_path = tmp_path / "compare.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path / "runs")))
    # --only trains one run (processes can share an accelerator); the summary waits for the others. It is
    # evaluated with the settings compare trained it with, not read back from its config file.
    with monkeypatch.context() as patch:
        patch.setattr(ginformer.runs.evaluate, "load_run_settings", refuse_to_reread)
        assert main(["compare", "--config", str(config_path), "--only", "gin_half/seed3"]) == 0
    assert "3 run(s) still to train (gin_half/seed4, gin_two/seed3, gin_two/seed4)" in capsys.readouterr().out
    root = tmp_path / "runs" / "tiny_compare"
    assert (root / "gin_half" / "seed3" / "eval_val.json").is_file() and not (root / "gin_two").exists()
    assert not (root / "summary.md").exists()
    assert main(["compare", "--config", str(config_path), "--only", "gin_three"]) == 2
    assert "--only gin_three: no such run" in capsys.readouterr().err
    assert run_comparison(load_compare_settings(config_path)) == root

    for variant in ("gin_half", "gin_two"):
        for seed in (3, 4):
            run_dir = root / variant / f"seed{seed}"
            assert (run_dir / "model" / "config.json").is_file() and (run_dir / "eval_val.json").is_file()
            assert yaml.safe_load((run_dir / "config.yaml").read_text())["training"]["seed"] == seed

    # summary.csv against the runs' own metrics, recomputed here.
    summary = {row["variant"]: row for row in read_csv(root / "summary.csv")}
    assert set(summary) == {"gin_half", "gin_two", "baseline"}
    for variant in ("gin_half", "gin_two"):
        best = []
        for seed in (3, 4):
            lines = (root / variant / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()
            events = [json.loads(line) for line in lines]
            best.append(math.exp(min(e["val_loss"] for e in events if e["event"] == "eval")))
        assert float(summary[variant]["min_val_perplexity_mean"]) == pytest.approx(statistics.fmean(best))
        assert float(summary[variant]["min_val_perplexity_std"]) == pytest.approx(statistics.stdev(best))
        assert summary[variant]["seeds"] == "3 4"
    evaluation = json.loads((root / "gin_half" / "seed3" / "eval_val.json").read_text())
    assert float(summary["baseline"]["both_mean"]) == pytest.approx(evaluation["baselines"]["both"])
    assert float(summary["baseline"]["min_val_perplexity_mean"]) == pytest.approx(evaluation["unigram_perplexity"])
    assert len(read_csv(root / "runs.csv")) == 4
    markdown = (root / "summary.md").read_text()
    assert "baseline" in markdown and "seeds [3, 4]" in markdown and "40,000 parameters" in markdown

    figures = sorted(p.name for p in (root / "figures").glob("*.png"))
    assert figures == sorted([
        "train_loss.png", "val_perplexity.png", "min_val_perplexity.png", "min_train_loss.png",
        "generalisation_gap.png", "score_both.png", "val_perplexity_vs_gamma.png", "val_perplexity_vs_flops.png",
        "sharpening_per_layer.png", "gin_eps_per_layer.png",  # learned per layer (Fig. 5)
        *(f"{key}_{kind}_{variant}.png" for key in ("sharpening", "gin_eps") for kind in ("over_training", "summary")
          for variant in ("gin_half", "gin_two")),  # moving over training (Fig. 10, 11)
    ])
    for name in figures:
        image = matplotlib.image.imread(root / "figures" / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 100
        assert (root / "figures" / name).with_suffix(".svg").is_file()

    # A second call trains and evaluates nothing again: finished runs are reused.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr(ginformer.runs.compare, "train", refuse)
    monkeypatch.setattr(ginformer.runs.compare, "evaluate_run", refuse)
    assert main(["compare", "--config", str(config_path)]) == 0
    assert "| gin_half" in capsys.readouterr().out

    # A finished run trained with other settings is never silently reused.
    assert main(["compare", "--config", str(config_path), "--set", "training.learning_rate=0.5"]) == 2
    assert "was trained with other settings (training.learning_rate)" in capsys.readouterr().err
    monkeypatch.undo()

    # An unfinished run (a checkpoint, no final model) resumes from its checkpoint.
    unfinished = root / "gin_two" / "seed4"
    shutil.rmtree(unfinished / "model")
    (unfinished / "eval_val.json").unlink()
    calls = []
    real_train = ginformer.runs.compare.train

    def spy(settings, resume=False, overwrite=False):
        calls.append((settings.run_dir, resume, overwrite))
        return real_train(settings, resume=resume, overwrite=overwrite)

    monkeypatch.setattr(ginformer.runs.compare, "train", spy)
    run_comparison(load_compare_settings(config_path))
    assert calls == [(unfinished, True, False)]
    assert (unfinished / "model" / "config.json").is_file() and (unfinished / "eval_val.json").is_file()


def test_shipped_compare_configs_load_and_size(tmp_path):
    demo = load_compare_settings(bundled_config(DEMO_CONFIG))
    assert demo.variants.keys() >= {"reference", "gin"}
    sizes = variant_parameters(demo)
    for parameters, _ in sizes.values():
        assert 0.95e6 <= parameters <= 3_000_000
    assert sizes["reference"][1] != sizes["gin"][1]  # matched by the hidden size, not by equal architectures
    paper = load_compare_settings(CONFIGS / "protein_compare_paper.yaml")
    assert len(paper.seeds) == 3 and paper.target_params == 25_000_000
    run = paper.run_settings("gin_best", paper.seeds[0])
    assert (run.model.num_hidden_layers, run.model.num_attention_heads) == (6, 8)
    assert run.model.gin_mlp_multiplier == 0.5 and run.model.use_o_proj is False and run.model.learn_sharpening


def test_a_sweep_chooses_the_lowest_mean_and_marks_a_choice_at_the_grid_edge():
    def summary(loss):
        return run_summary("v", 0, synthetic_metrics([(2, loss)], [(1, loss + 0.1)]), {"scores": {}})

    grid = {"training.learning_rate": [1e-4, 1e-3, 1e-2]}
    tried = [({"training.learning_rate": rate}, [summary(a), summary(b)])
             for rate, (a, b) in zip(grid["training.learning_rate"], [(2.0, 2.2), (1.5, 1.9), (1.8, 1.4)])]
    choice = choose_point(tried, grid, "min_val_loss")
    # Means 2.1, 1.7, 1.6: the largest rate wins on the mean although 1e-3 has the best single run.
    assert choice.point == {"training.learning_rate": 1e-2}
    assert [round(mean, 6) for _, mean in choice.means] == [2.1, 1.7, 1.6]
    assert choice.at_edge == ["training.learning_rate"]
    inside = choose_point([*tried[:2], (tried[2][0], [summary(3.0)])], grid, "min_val_loss")
    assert inside.point == {"training.learning_rate": 1e-3} and inside.at_edge == []
    ties = choose_point([(p, [summary(1.0)]) for p, _ in tried], grid, "min_val_loss")
    assert ties.point == {"training.learning_rate": 1e-4}  # a tie goes to the first point in grid order


@pytest.mark.parametrize("sweep, message", [
    ({"grid": {"learning_rate": [1e-3]}}, "sweep.grid.learning_rate=.*section.name"),
    ({"grid": {"training.seed": [1, 2]}}, "sweep.grid.training.seed=.*the comparison sets those"),
    ({"grid": {"training.learning_rate": []}}, "non-empty list of distinct values"),
    ({"grid": {"training.learning_rate": [1e-3, 1e-3]}}, "non-empty list of distinct values"),
    ({"grid": {"training.learning_rat": [1e-3]}}, "variant 'gin_half' at training.learning_rat=0.001: unknown key"),
    ({"grid": {"training.learning_rate": ["fast"]}}, "training.learning_rate='fast' is not allowed"),
    ({"seeds": []}, "sweep.seeds=\\[\\] is not allowed"),
    ({"metric": "accuracy"}, "sweep.metric='accuracy' is not allowed"),
])
def test_bad_sweeps_name_the_key(tmp_path, sweep, message):
    with pytest.raises(ConfigError, match=message):
        compare_settings_from_dict(tiny_config(tmp_path, sweep=sweep))


def test_equal_compute_scales_each_variants_steps_by_its_flops(tmp_path):
    variants = {"reference": {"attention_kind": "standard"}, "pna": {"attention_kind": "pna"}}
    settings = compare_settings_from_dict(tiny_config(tmp_path, variants=variants, equal_compute=True,
                                                      target_params=80_000,
                                                      training={**TINY_BASE["training"], "max_steps": 40}))
    flops = settings.flops_per_token
    assert flops["pna"] > flops["reference"] > 0
    steps = {v: settings.run_settings(v, 3).training.max_steps for v in variants}
    assert steps["reference"] == 40 and steps["pna"] == round(40 * flops["reference"] / flops["pna"]) < 40
    with pytest.raises(ConfigError, match="equal_compute=True is not allowed"):
        compare_settings_from_dict(tiny_config(tmp_path, equal_compute=True, training={
            k: v for k, v in TINY_BASE["training"].items() if k != "max_steps"}))


@pytest.mark.slow  # tens of seconds on 2 cores: runs in CI (make test-all)
def test_a_sweep_runs_every_point_then_the_seeds_at_the_chosen_one_reusing_its_runs(tmp_path, monkeypatch):
    rates = [1.0e-3, 1.0e-2]
    config = tiny_config(tmp_path / "runs", sweep={"grid": {"training.learning_rate": rates}, "seeds": [3]})
    trained = []
    real_train = ginformer.runs.compare.train
    monkeypatch.setattr(ginformer.runs.compare, "train",
                        lambda run, **kw: (trained.append(run.run_dir), real_train(run, **kw))[1])
    root = run_comparison(compare_settings_from_dict(config))
    assert len(trained) == 2 * 2 + 2  # 2 variants × 2 rates × seed 3, then seed 4 at each chosen rate
    for variant in ("gin_half", "gin_two"):
        losses = {}
        for rate in rates:
            events = RunDir(root / variant / f"training.learning_rate={rate:g}" / "seed3").read_metrics()
            losses[rate] = min(e["val_loss"] for e in events if e["event"] == "eval")
        best = min(rates, key=losses.get)  # by hand: the lowest validation loss of the sweep's one seed
        chosen = root / variant / f"training.learning_rate={best:g}"
        assert (chosen / "seed4" / "eval_val.json").is_file()
        assert yaml.safe_load((chosen / "seed4" / "config.yaml").read_text())["training"]["learning_rate"] == best
        sweep_rows = [r for r in read_csv(root / "sweep.csv") if r["variant"] == variant]
        assert {r["point"]: float(r["mean_metric"]) for r in sweep_rows} == pytest.approx(
            {f"training.learning_rate={rate:g}": losses[rate] for rate in rates})
        assert [r["point"] for r in sweep_rows if r["chosen"] == "True"] == [f"training.learning_rate={best:g}"]
    markdown = (root / "summary.md").read_text()
    assert "## Sweep" in markdown and "**chosen** (edge of the grid: training.learning_rate)" in markdown
    assert (root / "figures" / "sweep_training.learning_rate.png").is_file()
    assert len(read_csv(root / "runs.csv")) == 4  # the seeds at the chosen points only


def test_a_seed_waits_for_its_variants_sweep_and_nothing_trains_meanwhile(tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "runs", sweep={"grid": {"training.learning_rate": [1.0e-3, 1.0e-2]},
                                                         "seeds": [3]})
    monkeypatch.setattr(ginformer.runs.compare, "train", lambda *a, **k: pytest.fail("nothing may train"))
    settings = compare_settings_from_dict(config)
    with pytest.raises(ConfigError, match="--only gin_half/seed4: the variant's sweep is not finished"):
        run_comparison(settings, only=["gin_half/seed4"])
    with pytest.raises(ConfigError, match="no such run; runs: .*gin_half/training.learning_rate=0.01/seed3"):
        run_comparison(settings, only=["gin_half/seed9"])
    pending = pending_runs(settings)
    assert pending[:2] == ["gin_half/training.learning_rate=0.001/seed3", "gin_half/training.learning_rate=0.01/seed3"]
    assert "gin_half/seed4" in pending and "gin_half/seed3" not in pending  # seed 3 is the sweep's own run

"""Run configs: defaults, YAML + --set overrides, validation errors, the model side and the task, the shipped
configs, the CLI's error path."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from transformers import LlamaConfig

from ginformer.adapter import SparseGINConfig
from ginformer.cli import main
from ginformer.modeling import GinformerConfig
from ginformer.runs.config import (
    TrainingSettings,
    apply_overrides,
    bundled_configs,
    load_run_settings,
    run_settings_from_dict,
    save_run_settings,
)
from ginformer.runs.models import PretrainedModelSettings, ScratchModelSettings
from ginformer.settings import ConfigError, load_yaml
from ginformer.sizing import config_parameters
from ginformer.tasks import TASKS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_settings(path=None, overrides=(), side="scratch"):
    return load_run_settings(path, overrides, side=side)


def test_training_defaults_are_the_papers_table_1():
    t = TrainingSettings()
    assert (t.learning_rate, t.lr_scheduler, t.warmup_steps) == (1e-4, "constant_with_warmup", 250)
    assert (t.per_device_train_batch_size, t.per_device_eval_batch_size, t.gradient_accumulation_steps) == (8, 4, 4)
    assert (t.weight_decay, t.max_grad_norm, t.num_train_epochs) == (0.01, 1.0, 9.0)


def test_every_graph_option_of_ginformer_config_is_a_model_key_with_its_default():
    """The model section is built from GinformerConfig: its graph options, their defaults, and Llama's sizes at the
    paper's values; nothing to keep in step by hand."""
    llama_fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    reference = GinformerConfig(vocab_size=64)
    settings = ScratchModelSettings()
    for f in dataclasses.fields(GinformerConfig):
        if f.name not in llama_fields:
            theirs = getattr(reference, f.name)
            assert getattr(settings, f.name) == (list(theirs) if isinstance(theirs, tuple) else theirs), f.name
    assert (settings.num_hidden_layers, settings.num_attention_heads, settings.hidden_size) == (6, 8, 512)
    with pytest.raises(ConfigError, match=r"model\.gin_mlp_multiplier='wide'.*a finite number"):
        load_settings(None, ["model.gin_mlp_multiplier=wide"])


def test_to_config_builds_the_described_model():
    settings = load_settings(None, ["model.attention_kind=[gin, standard]", "model.num_hidden_layers=2"])
    config = settings.model.to_config(vocab_size=40, pad_token_id=0)
    assert isinstance(config, GinformerConfig)
    assert config.layer_kinds() == ["gin", "standard"]
    assert (config.vocab_size, config.pad_token_id, config.num_key_value_heads) == (40, 0, 8)


def test_target_params_sizes_hidden_size():
    settings = load_settings(None, ["model.target_params=2_000_000", "model.num_hidden_layers=4",
                                    "model.num_attention_heads=4", "model.intermediate_size=512"])
    config = settings.model.to_config(vocab_size=40)
    assert config.hidden_size != settings.model.hidden_size
    assert abs(config_parameters(config) - 2_000_000) < 0.05 * 2_000_000
    assert config.intermediate_size == 512  # scale_intermediate=False keeps the feed-forward width


@pytest.mark.parametrize(
    "text, expected",
    [
        ("training.max_steps=20", {"training": {"max_steps": 20}}),
        ("training.learning_rate=1e-4", {"training": {"learning_rate": "1e-4"}}),  # YAML 1.1: no dot, a string
        ("training.learning_rate=1.0e-4", {"training": {"learning_rate": 1e-4}}),
        ("training.bf16=true", {"training": {"bf16": True}}),
        ("model.attention_kind=[gin, standard]", {"model": {"attention_kind": ["gin", "standard"]}}),
        ("training.run_name=a=b", {"training": {"run_name": "a=b"}}),
        ("training.max_steps=null", {"training": {"max_steps": None}}),
        ("training.max_steps=", {"training": {"max_steps": None}}),
        ("model.sparse_gin.d_gnn=64", {"model": {"sparse_gin": {"d_gnn": 64}}}),
    ],
)
def test_one_override_grammar_with_nested_keys(text, expected):
    assert apply_overrides({}, [text]) == expected


def test_overrides_leave_the_input_untouched_and_merge_nested_keys():
    raw = {"model": {"sparse_gin": {"d_gnn": 155, "alpha": 10.0}}}
    merged = apply_overrides(raw, ["model.sparse_gin.d_gnn=64"])
    assert merged == {"model": {"sparse_gin": {"d_gnn": 64, "alpha": 10.0}}}
    assert raw["model"]["sparse_gin"]["d_gnn"] == 155
    with pytest.raises(ConfigError, match="'model.sparse_gin' holds 3, not a mapping"):
        apply_overrides({"model": {"sparse_gin": 3}}, ["model.sparse_gin.d_gnn=1"])


@pytest.mark.parametrize("text", ["max_steps=20", "training.max_steps", "=3", "training.=3", ".x=1", "a..b=1"])
def test_malformed_override_is_rejected(text):
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, [text])
    with pytest.raises(ConfigError, match="section.key=value"):  # after a nested one, as the first
        apply_overrides({}, ["model.sparse_gin.d_gnn=64", text])


def test_overrides_apply_in_order_over_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training: {max_steps: 5, run_name: from_file}\nmodel: {num_hidden_layers: 3}\n")
    settings = load_settings(path, ["training.max_steps=7", "training.learning_rate=1e-4", "training.max_steps=9"])
    assert settings.training.max_steps == 9
    assert settings.training.learning_rate == pytest.approx(1e-4)  # "1e-4" read as the number it is
    assert settings.training.run_name == "from_file"
    assert settings.model.num_hidden_layers == 3
    assert settings.run_dir == Path("runs") / "from_file"


def test_unknown_key_names_the_key_and_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_settings(None, ["training.learnin_rate=0.1"])
    message = str(err.value)
    assert "training.learnin_rate" in message
    assert "did you mean 'learning_rate'" in message
    assert "max_grad_norm" in message  # the allowed keys are listed


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match="unknown section: 'optim'.*model, data, training"):
        run_settings_from_dict({"optim": {"lr": 1}})
    with pytest.raises(ConfigError, match="unknown section"):
        load_settings(None, ["optim.lr=1"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("training.max_steps=abc", r"training\.max_steps='abc'.*an integer or null"),
        ("training.max_steps=1.5", r"training\.max_steps=1\.5.*an integer"),
        ("training.max_steps=0", r"training\.max_steps=0.*> 0"),
        ("training.bf16=1", r"training\.bf16=1.*true or false"),
        ("training.lr_scheduler=cosine_restarts", r"training\.lr_scheduler.*'constant_with_warmup'"),
        ("training.run_name=a/b", r"training\.run_name"),
        ("training.learning_rate=fast", r"training\.learning_rate='fast'.*a finite number"),
        ("training.optim=adamw_fast", r"training\.optim='adamw_fast'.*Trainer's optimizers.*'adafactor'"),
        ("training.report_to=[tensorbord]", r"training\.report_to=\['tensorbord'\].*'tensorboard'"),
        ("training.report_to=tensorboard", r"training\.report_to='tensorboard'.*a list of a string"),
        ("data.val_fraction=1.5", r"data\.val_fraction=1\.5.*\(0, 1\)"),
        ("data.loss_on=prompt", r"data\.loss_on='prompt'.*\['all', 'labels'\]"),
        ("model.num_hidden_layers=-1", r"model\.num_hidden_layers=-1.*> 0"),
        ("model.attention_kind=gat", r"model: attention_kind must be one of \['standard', 'gin', 'pna'\]"),
        ("model.attention_kind=[gin, gin]", r"attention_kind lists 2 kinds for 6 layers"),
        ("model.adjacency_activation=tanh", r"adjacency_activation must be one of"),
        ("model.hidden_size=100", r"hidden_size \(100\) must be divisible by num_attention_heads \(8\)"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_settings(None, [override])


def test_a_section_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training: 3\n")
    with pytest.raises(ConfigError, match="section 'training' must be a mapping"):
        load_settings(path)


def test_saved_settings_load_back_equal(tmp_path):
    settings = load_settings(None, ["model.attention_kind=[gin, pna]", "model.num_hidden_layers=2",
                                    "training.max_steps=3", "data.loss_on=labels"])
    save_run_settings(settings, tmp_path / "config.yaml")
    assert load_run_settings(tmp_path / "config.yaml") == settings  # the saved model section says its side


@pytest.mark.parametrize("name", ["protein_demo", "protein_gin_paper", "protein_reference_paper"])
def test_shipped_configs_load(name):
    settings = load_settings(CONFIGS / f"{name}.yaml")
    assert settings.training.run_name == {"protein_demo": "protein_demo_gin"}.get(name, name)


def test_every_shipped_run_config_loads_with_its_command_and_is_package_data():
    """Every configs/*.yaml is either a run config (pretrain or finetune) or a compare config, and the installed
    package lists the same files, so `--config NAME.yaml` works outside a checkout."""
    from ginformer.runs.compare_config import load_compare_settings

    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert bundled_configs() == names
    for name in names:
        raw = yaml.safe_load((CONFIGS / name).read_text())
        if "variants" in raw:
            load_compare_settings(CONFIGS / name)
        else:
            side = "pretrained" if {"base", "method"} & set(raw.get("model") or {}) else "scratch"
            assert load_run_settings(name, side=side).side.name == side  # found by name, as bundled


def test_paper_configs_are_25m_parameter_models_that_differ_only_in_attention():
    gin = load_settings(CONFIGS / "protein_gin_paper.yaml")
    reference = load_settings(CONFIGS / "protein_reference_paper.yaml")
    assert gin.data == reference.data
    assert dataclasses.replace(gin.training, run_name="x") == dataclasses.replace(reference.training, run_name="x")
    gin_config, reference_config = gin.model.to_config(vocab_size=40), reference.model.to_config(vocab_size=40)
    assert (gin_config.hidden_size, reference_config.hidden_size) == (528, 512)  # the paper's sizes
    for config in (gin_config, reference_config):
        assert (config.num_hidden_layers, config.num_attention_heads) == (6, 8)
        assert abs(config_parameters(config) - 25_000_000) < 0.05 * 25_000_000
    assert (gin_config.adjacency_activation, gin_config.gin_mlp_multiplier) == ("softmax", 0.5)
    assert gin_config.learn_sharpening and not gin_config.use_o_proj


def test_demo_config_is_a_small_cpu_model():
    settings = load_settings(CONFIGS / "protein_demo.yaml")
    for kind in ("gin", "standard", "pna"):
        config = dataclasses.replace(settings.model, attention_kind=kind).to_config(vocab_size=40)
        assert 1_000_000 <= config_parameters(config) <= 3_000_000
    assert settings.training.max_steps <= 500


def test_the_model_side_and_the_task_decide_the_sections():
    scratch = load_settings(None, ["model.num_hidden_layers=2"])
    assert isinstance(scratch.model, ScratchModelSettings) and scratch.data.task == "protein"
    pretrained = load_settings(None, ["model.sparse_gin.d_gnn=64"], side="pretrained")
    assert isinstance(pretrained.model, PretrainedModelSettings) and pretrained.data.task == "gsm8k"
    assert pretrained.model.sparse_gin == SparseGINConfig(d_gnn=64)
    assert (pretrained.training.learning_rate, pretrained.training.max_grad_norm) == (2e-4, 0.5)  # paper, Table 2
    assert load_run_settings(None, ["model.method=lora"]).side.name == "pretrained"  # read off the section
    text = load_settings(None, ["data.task=text", "data.block_size=64"])
    assert type(text.data) is TASKS["text"].settings_class and text.data.block_size == 64
    with pytest.raises(ConfigError, match=r"unknown key in 'data': 'data.block_size'.*of task 'protein'"):
        load_settings(None, ["data.block_size=64"])  # the protein task has no blocks


@pytest.mark.parametrize(
    ("overrides", "side", "message"),
    [
        (["model.base=smollm2"], "scratch", "model.base describes a pretrained model.*ginformer finetune"),
        (["model.attention_kind=gin"], "pretrained", "model.attention_kind describes a scratch model.*pretrain"),
        (["data.task=protein"], "pretrained", "data.task='protein' needs a model trained from scratch"),
        (["data.task=gsm8k"], "scratch", "data.task='gsm8k' needs a pretrained model"),
        (["data.task=txt"], "scratch", "unknown data.task: 'txt' \\(did you mean 'text'\\?\\)"),
        (["data.task=text", "data.tokenizer=byte"], "pretrained", "reads text with its own tokenizer"),
        (["data.task=text", "data.block_size=1"], "scratch", "data.block_size=1"),
        (["model.sparse_gin.d_gnnn=4"], "pretrained", "model.sparse_gin.d_gnnn"),
        (["model.method=sparse_gin"], "pretrained", "model.method"),
        (["model.sparse_gin.d_gnn=0"], "pretrained", "d_gnn"),
        (["model.lora.target=mlp"], "pretrained", "model.lora.target"),
        (["model.lora.rank=0"], "pretrained", "model.lora.rank"),
        (["data.max_length=1"], "pretrained", "data.max_length"),
        (["model.sparse_gin=3"], "pretrained", "model.sparse_gin"),
        (["training.min_lr_ratio=1"], "scratch", "training.min_lr_ratio"),
    ],
)
def test_settings_that_do_not_fit_together_stop_before_anything_loads(overrides, side, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(None, overrides, side=side)


def test_a_config_is_found_among_the_bundled_ones_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout
    assert load_settings("protein_demo.yaml").training.run_name == "protein_demo_gin"
    with pytest.raises(ConfigError, match="config file not found: nothing.yaml.*shakespeare_char_cpu.yaml"):
        load_settings("nothing.yaml")
    (tmp_path / "protein_demo.yaml").write_text("training: {run_name: mine}\n")
    assert load_settings("protein_demo.yaml").training.run_name == "mine"  # a file of that name comes first


def test_cli_reports_a_bad_config_in_one_line_with_exit_code_2(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"training": {"max_step": 3}}))
    assert main(["pretrain", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "training.max_step" in err and "did you mean 'max_steps'" in err

    assert main(["pretrain", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["pretrain", "--config", str(path), "--set", "nonsense"]) == 2
    assert "section.key=value" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"model": {"method": "prefix"}}))
    assert main(["finetune", "--config", str(path)]) == 2
    assert "model.method" in capsys.readouterr().err


def test_cli_resume_and_overwrite_exclude_each_other():
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--config", "x.yaml", "--resume", "--overwrite"])
    assert exit_info.value.code == 2


def test_a_key_written_twice_is_an_error_naming_the_key_and_both_lines(tmp_path):
    from ginformer.runs.compare_config import load_compare_settings

    path = tmp_path / "run.yaml"
    path.write_text("training:\n  run_name: first\n  max_steps: 3\n  run_name: second\n")
    with pytest.raises(ConfigError, match=r"run.yaml: key 'run_name' is written twice, on lines 2 and 4"):
        load_settings(path)
    compare = tmp_path / "compare.yaml"
    compare.write_text("name: c\nseeds: [0]\ntarget_params: 60000\nvariants:\n  gin: {attention_kind: gin}\n"
                       "  gin: {attention_kind: pna}\n")
    with pytest.raises(ConfigError, match=r"compare.yaml: key 'gin' is written twice, on lines 5 and 6"):
        load_compare_settings(compare)
    with pytest.raises(ConfigError, match=r"--set model.pna_aggregators: key 'a' is written twice"):
        load_settings(None, ["model.pna_aggregators={a: 1, a: 2}"])
    # A merged key may be overridden: that is what merge keys are for.
    merged = load_yaml("defaults: &d {max_steps: 3, seed: 1}\ntraining:\n  <<: *d\n  max_steps: 5\n", "x.yaml")
    assert merged["training"] == {"max_steps": 5, "seed": 1}


def test_a_config_with_a_byte_order_mark_or_nested_too_deeply_is_read_or_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("\ufefftraining: {max_steps: 7}\r\n".encode())
    assert load_settings(path).training.max_steps == 7
    path.write_text("training: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(ConfigError, match="run.yaml: its values are nested too deeply to read"):
        load_settings(path)


def test_a_training_field_reaches_trainer_by_its_name_and_a_schedule_by_its_choice():
    """A new Trainer option is one field of TrainingSettings (adam_beta1), a new schedule one choice (inverse_sqrt):
    nothing else maps them."""
    from transformers.trainer_utils import SchedulerType

    from ginformer.runs.train import training_arguments

    settings = load_settings(None, ["training.adam_beta1=0.8", "training.lr_scheduler=inverse_sqrt"])
    arguments = training_arguments(settings)
    assert arguments.adam_beta1 == 0.8 and arguments.lr_scheduler_type == SchedulerType.INVERSE_SQRT
    assert arguments.run_name == settings.training.run_name  # Trainer's loggers name the run as its directory
    with pytest.raises(ConfigError, match=r"training\.adam_beta1=1\.5.*in \[0, 1\)"):
        load_settings(None, ["training.adam_beta1=1.5"])

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vlm_core.cli import main
from vlm_core.config import ConfigError, load_config, parse_config, parse_override
from vlm_core.registry import Registry

MINIMAL = {
    "data": {"datasets": {"caps": {"url": "data/align.jsonl"}}},
    "stages": {"align": {"datasets": ["caps"], "trainable": ["projector"], "max_steps": 10}},
}


def test_minimal_config_fills_defaults():
    cfg = parse_config(MINIMAL)
    assert cfg.stage("align").learning_rate > 0
    assert cfg.stage_output("align") == "runs/vlm-run/align"
    assert cfg.tensorboard_dir("align") == "runs/vlm-run/tensorboard/align"


def test_error_names_field_value_and_allowed(tmp_path):
    bad = json.loads(json.dumps(MINIMAL))
    bad["stages"]["align"]["learning_rate"] = -1
    bad["distributed"] = {"deepspeed": "zero9"}
    bad["model"] = {"projector": {"type": "mlp2x_relu"}}
    with pytest.raises(ConfigError) as info:
        parse_config(bad, source="x.yaml")
    msg = str(info.value)
    assert "stages.align.learning_rate" in msg and "-1" in msg
    assert "distributed.deepspeed" in msg and "'zero9'" in msg and "zero3_offload" in msg
    assert "model.projector.type" in msg and "mlp{N}x_gelu" in msg


def test_unknown_field_and_dangling_dataset_rejected():
    typo = {**MINIMAL, "outptu": "x"}
    with pytest.raises(ConfigError, match="outptu: unknown field"):
        parse_config(typo)
    dangling = json.loads(json.dumps(MINIMAL))
    dangling["stages"]["align"]["datasets"] = ["nope"]
    with pytest.raises(ConfigError, match="'nope', which is not in data.datasets"):
        parse_config(dangling)
    corpus = json.loads(json.dumps(MINIMAL))
    corpus["model"] = {"tokenizer": {"train_corpus": ["synth_instruct"]}}
    with pytest.raises(ConfigError, match=r"model.tokenizer.train_corpus names 'synth_instruct', which is not in data.datasets"):
        parse_config(corpus)


def test_position_init_std_is_for_random_towers_only():
    pretrained = json.loads(json.dumps(MINIMAL))
    pretrained["model"] = {"vision": {"name_or_path": "openai/clip-vit-large-patch14-336", "position_init_std": 1.0}}
    with pytest.raises(ConfigError, match="position_init_std sets a random tower's initial position embeddings"):
        parse_config(pretrained)
    negative = json.loads(json.dumps(MINIMAL))
    negative["model"] = {"vision": {"position_init_std": 0}}
    with pytest.raises(ConfigError, match="model.vision.position_init_std"):
        parse_config(negative)


def test_epochs_xor_max_steps():
    both = json.loads(json.dumps(MINIMAL))
    both["stages"]["align"]["epochs"] = 1
    with pytest.raises(ConfigError, match="exactly one of epochs or max_steps"):
        parse_config(both)


def test_cli_validate_and_schema(tmp_path):
    import yaml

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(MINIMAL))
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [1, 2]\n")
    runner = CliRunner()
    ok = runner.invoke(main, ["config", "validate", str(good)])
    assert ok.exit_code == 0, ok.output
    fail = runner.invoke(main, ["config", "validate", str(bad)])
    assert fail.exit_code == 1 and "stages" in fail.output
    schema = json.loads(runner.invoke(main, ["config", "schema"]).output)
    assert set(schema["properties"]) >= {"model", "data", "stages", "distributed", "eval", "output"}
    assert load_config(good).stages["align"].max_steps == 10


def test_registry_unknown_name_lists_known():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(KeyError, match="unknown widget 'b'; known: a"):
        reg.get("b")
    with pytest.raises(ValueError):
        reg.add("a", 2)


@pytest.mark.parametrize("name", ["quickstart", "llava-1.5-7b", "codefuse-vlm-14b"])
def test_shipped_configs_validate(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert {"align", "instruct"} <= set(cfg.stages)
    assert cfg.resolve_init("instruct") == cfg.stage_output("align")
    if name == "codefuse-vlm-14b":
        assert (cfg.model.vision.encoder, cfg.model.projector.type, cfg.model.projector.num_queries) == (
            "qwen_vl_vit", "cross_attn", 256)


def test_overrides_apply_dotted_keys_and_validate_the_result():
    cfg = parse_config(MINIMAL)
    changed = cfg.with_overrides({"cluster.image": "my-registry/vlm:1.2", "data.datasets.caps.url": "s3://b/caps.jsonl"})
    assert changed.cluster.image == "my-registry/vlm:1.2"
    assert changed.data.datasets["caps"].url == "s3://b/caps.jsonl"
    assert cfg.cluster.image != "my-registry/vlm:1.2", "the original config is left as it was"
    by_epochs = parse_config({**MINIMAL, "stages": {"align": {**MINIMAL["stages"]["align"], "max_steps": None, "epochs": 1}}})
    smoke = by_epochs.with_overrides({"stages.align.max_steps": 5})
    assert (smoke.stages["align"].max_steps, smoke.stages["align"].epochs) == (5, None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stages.algn.max_steps": 3}, "stages.algn.max_steps: stages has no 'algn' (it has: align)"),
        ({"stages.align.max_step": 3}, "stages.align.max_step: unknown field"),
        ({"stages.align.max_steps": -1}, "stages.align.max_steps: Input should be greater than 0"),
        ({"cluster.image.tag": "x"}, "cluster.image.tag: cluster.image is a value, not a section"),
    ],
)
def test_a_bad_override_names_its_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(MINIMAL).with_overrides(overrides, source="--set")


def test_override_values_read_as_yaml():
    assert parse_override("distributed.nodes=4") == ("distributed.nodes", 4)
    assert parse_override("cluster.image=reg/vlm:1.2") == ("cluster.image", "reg/vlm:1.2")
    assert parse_override("eval.limit=null") == ("eval.limit", None)
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse_override("distributed.nodes")


def test_floats_written_without_a_dot_stay_floats(tmp_path):
    """Helm (Go) writes 1e-05; YAML 1.1 would read that as a string and hand it to transformers."""
    path = tmp_path / "run.yaml"
    data = json.loads(json.dumps(MINIMAL))
    data["model"] = {"llm": {"config": {"model_type": "llama", "rms_norm_eps": "EPS"}}}
    path.write_text(json.dumps(data).replace('"EPS"', "1e-05"))
    assert load_config(path).model.llm.config["rms_norm_eps"] == 1e-05
    assert parse_override("stages.align.learning_rate=2e-5") == ("stages.align.learning_rate", 2e-5)


def test_decay_steps_go_with_warmup_stable_decay():
    def stage(**fields):
        cfg = json.loads(json.dumps(MINIMAL))
        cfg["stages"]["align"].update(fields)
        return cfg

    with pytest.raises(ConfigError, match="warmup_stable_decay, and that scheduler needs it"):
        parse_config(stage(lr_scheduler="warmup_stable_decay"))
    with pytest.raises(ConfigError, match="decay_steps goes with lr_scheduler: warmup_stable_decay"):
        parse_config(stage(decay_steps=5))
    assert parse_config(stage(lr_scheduler="warmup_stable_decay", decay_steps=6, warmup_steps=4)).stage("align").decay_steps == 6

"""`vlm export --format llava-hf`: transformers' own Llava classes load the export and agree with us.

Proven by ``LlavaForConditionalGeneration.from_pretrained`` (logits <= 1e-5, fp32, padded image
batch), by the exported ``LlavaProcessor`` (chat template rendering == the run template's token
ids, pixels == ours) and by ``transformers.pipeline("image-text-to-text")`` answering with the
same greedy text as ``vlm chat``.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
)

from tests import published_checkpoints as pl
from tests.test_models_import import write_llava_hf
from vlm_core.cli import main
from vlm_core.config import ModelConfig
from vlm_core.data.templates import get_template
from vlm_core.eval.generate import prompt_ids
from vlm_core.models import build_vlm, load_checkpoint, save_checkpoint
from vlm_core.models.importers import import_checkpoint
from vlm_core.models.tokenizer import train_bpe_tokenizer

PROMPT = "what colour is the shape?"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A CLIP tower (3 layers, LLaVA's layer -2) and a Llama LLM with its tokenizer, by save_pretrained."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**pl.TOWER)).save_pretrained(root / "clip")
    tokenizer = train_bpe_tokenizer(pl.TEXTS, 320)
    LlamaForCausalLM(pl.llama_config(len(tokenizer))).save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    return root


def _build(parts, template="vicuna_v1", image_aspect="pad", **model):
    cfg = ModelConfig.model_validate({
        "vision": {"encoder": "clip", "name_or_path": str(parts / "clip")},  # feature_layer: the family's -2
        "llm": {"name_or_path": str(parts / "llama")}, **model,
    })
    built, processor = build_vlm(cfg, template=template, image_aspect=image_aspect,
                                 special_tokens=get_template(template).special_tokens)
    return built.eval(), processor


def _images():
    g = torch.Generator().manual_seed(3)
    return [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()) for h, w in ((24, 40), (50, 30))]


@pytest.fixture(scope="module")
def exported(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model, processor = _build(parts)
    save_checkpoint(model, processor, str(root / "ckpt"))
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(root / "ckpt"), "--out", str(root / "llava"),
                                       "--format", "llava-hf"])
    assert result.exit_code == 0, result.output
    return root


def test_transformers_llava_loads_the_export_with_the_same_logits(exported):
    model, processor = load_checkpoint(str(exported / "ckpt"))
    llava = LlavaForConditionalGeneration.from_pretrained(exported / "llava").eval()
    # the tower is written trimmed, and the feature layer counts in it: LLaVA's -2 of 3 layers is -1 of 2
    assert llava.config.vision_config.num_hidden_layers == 2 and llava.config.vision_feature_layer == -1
    assert llava.config.vision_feature_select_strategy == "default"
    short, long = prompt_ids(processor, "red?", True), prompt_ids(processor, PROMPT + " and where is it?", True)
    ids = torch.full((2, len(long)), processor.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate((short, long)):
        ids[row, : len(prompt)], mask[row, : len(prompt)] = torch.tensor(prompt), 1
    pixels = processor.process_images(_images())
    with torch.no_grad():
        ours = model.eval()(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        theirs = llava(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    torch.testing.assert_close(theirs[mask.bool()], ours[mask.bool()], rtol=0, atol=1e-5)


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml", "llava_llama_2", "llama3"])
@pytest.mark.parametrize("image_aspect", ["pad", "square"])
def test_exported_processor_reproduces_the_run_template_and_pixels(parts, tmp_path, template, image_aspect):
    from vlm_core.models.exporters.llava_hf import export_llava_hf

    model, processor = _build(parts, template=template, image_aspect=image_aspect)
    export_llava_hf(model, processor, str(tmp_path))
    hf = AutoProcessor.from_pretrained(tmp_path)
    image = _images()[0]
    rendered = hf.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    assert rendered["input_ids"][0].tolist() == prompt_ids(processor, PROMPT, True)
    torch.testing.assert_close(rendered["pixel_values"], processor.process_images([image]), rtol=0, atol=1e-6)
    conversation = [{"from": "system", "value": "Answer in one word."}, {"from": "human", "value": "<image>\nwhat shape?"},
                    {"from": "gpt", "value": "circle"}, {"from": "human", "value": PROMPT}]
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    text = hf.apply_chat_template([{"role": role[t["from"]], "content": t["value"]} for t in conversation],
                                  add_generation_prompt=True, tokenize=False)
    expected = get_template(template).prompt_ids(conversation, processor.tokenizer, processor.image_token_id,
                                                 processor.num_image_tokens)
    assert hf(images=[image], text=text, add_special_tokens=False)["input_ids"][0] == expected


def test_pipeline_answers_like_vlm_chat(exported, tmp_path):
    from transformers import pipeline

    image_path = tmp_path / "shape.png"
    _images()[1].save(image_path)
    result = CliRunner().invoke(main, ["chat", "--checkpoint", str(exported / "ckpt"), "--image", str(image_path),
                                       "--max-new-tokens", "12", PROMPT])
    assert result.exit_code == 0, result.output
    pipe = pipeline("image-text-to-text", model=str(exported / "llava"))
    messages = [{"role": "user", "content": [{"type": "image", "url": str(image_path)}, {"type": "text", "text": PROMPT}]}]
    [answer] = pipe(text=messages, max_new_tokens=12, return_full_text=False)
    assert answer["generated_text"].strip() == result.stdout.strip() != ""


def test_round_trip_llava_hf_import_export_keeps_the_logits(tmp_path):
    src = write_llava_hf(tmp_path / "src", seed=7)
    import_checkpoint("llava-hf", str(src), str(tmp_path / "ours"))
    CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "ours"), "--out", str(tmp_path / "back"),
                              "--format", "llava-hf"], catch_exceptions=False)
    before = LlavaForConditionalGeneration.from_pretrained(src).eval()
    after = LlavaForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    _, processor = load_checkpoint(str(tmp_path / "ours"))
    ids = torch.tensor([prompt_ids(processor, PROMPT, True)])
    pixels = processor.process_images(_images()[:1])
    with torch.no_grad():
        torch.testing.assert_close(after(input_ids=ids, pixel_values=pixels).logits,
                                   before(input_ids=ids, pixel_values=pixels).logits, rtol=0, atol=1e-6)


def test_lora_adapters_are_merged_into_the_export(exported, tmp_path):
    import json

    from peft import LoraConfig, get_peft_model

    model, processor = load_checkpoint(str(exported / "ckpt"))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    processor.save_pretrained(str(tmp_path / "adapter"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(exported / "ckpt")}))
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged"),
                                       "--format", "llava-hf"])
    assert result.exit_code == 0, result.output
    merged = peft_model.merge_and_unload().eval()
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([prompt_ids(processor, PROMPT, True)])
    pixels = processor.process_images(_images()[:1])
    with torch.no_grad():
        theirs = llava(input_ids=ids, pixel_values=pixels).logits
        torch.testing.assert_close(theirs, merged(input_ids=ids, pixel_values=pixels).logits, rtol=0, atol=1e-5)
        base = load_checkpoint(str(exported / "ckpt"))[0].eval()(input_ids=ids, pixel_values=pixels).logits
    assert not torch.allclose(theirs, base, atol=1e-3)  # the adapters changed something, and it was kept


@pytest.mark.parametrize("model,message", [
    ({"projector": {"type": "linear"}}, "the projector 'linear' has no equivalent in transformers' Llava"),
    ({"vision": {"encoder": "qwen_vl_vit", "config": {"num_positions": 16}}, "projector": {"type": "cross_attn", "num_queries": 4}},
     "the vision encoder 'qwen_vl_vit' has no equivalent in transformers' Llava"),
])
def test_architectures_llava_cannot_express_fail_in_one_line(tmp_path, model, message):
    built, processor = build_vlm(ModelConfig.model_validate(model), template="vicuna_v1", image_aspect="pad",
                                 tokenizer_texts=pl.TEXTS, special_tokens=["<s>", "</s>"])
    save_checkpoint(built, processor, str(tmp_path / "ckpt"))
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "x"),
                                       "--format", "llava-hf"])
    *_, error = result.output.strip().splitlines()  # (transformers' own progress bars come first)
    assert result.exit_code == 1 and message in error and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_a_template_that_drops_the_question_cannot_be_a_chat_template(parts, tmp_path):
    from vlm_core.models.exporters.chat_template import InexpressibleTemplate
    from vlm_core.models.exporters.llava_hf import export_llava_hf

    model, processor = _build(parts, template="plain")
    # plain (LLaVA's preprocess_plain) keeps no question text and refuses a turn without an image
    with pytest.raises((InexpressibleTemplate, ValueError), match="drops a turn's text|one human turn with an <image>"):
        export_llava_hf(model, processor, str(tmp_path))

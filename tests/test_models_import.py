"""`vlm import llava | llava-hf | qwen-vl`: imported logits equal the source's (fp32, <= 1e-5).

Sources are tiny checkpoints in the published layouts (tests/published_checkpoints.py). References:
transformers' LlavaForConditionalGeneration for LLaVA and llava-hf, and for Qwen v1 a forward
written from its published architecture; the Qwen tokenizer against tiktoken itself.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from tests import published_checkpoints as pl
from tests.test_qwen_vl_vit import IMAGE, LAYERS, OUT, QUERIES, qwen_vl_state_dict, reference_visual
from vlm_core.cli import main
from vlm_core.config import ConfigError, ModelConfig
from vlm_core.models import build_vlm, load_checkpoint
from vlm_core.models.importers import ImportOptions, UnsupportedCheckpoint, import_checkpoint
from vlm_core.models.tokenizer import train_bpe_tokenizer


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _image_prompt(processor, text: str = "what colour is the shape?") -> list[int]:
    from vlm_core.eval.generate import prompt_ids

    return prompt_ids(processor, text, with_image=True)


def _pixels(processor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    image = Image.fromarray((torch.rand(24, 40, 3, generator=g) * 255).to(torch.uint8).numpy())  # not square
    return processor.process_images([image])


# ----------------------------------------------------------------------------- llava (original layout)


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    paths = pl.write_llava(root)
    import_checkpoint("llava", str(paths["full"]), str(root / "imported"))
    return paths, root / "imported"


def test_llava_import_equals_transformers_llava(llava):
    paths, out = llava
    model, processor = load_checkpoint(str(out))
    model.eval()
    vocab = pl.vicuna_like_tokenizer().__len__()
    assert processor.image_token_id == vocab  # <image> added after Vicuna's vocabulary, pad = <unk> as LLaVA
    assert processor.tokenizer.pad_token == "<unk>" and processor.template == "vicuna_v1"
    assert processor.image_aspect == "pad" and model.config.projector_type == "mlp2x_gelu"
    reference = pl.llava_reference(paths, processor.image_token_id)
    ids = torch.tensor([_image_prompt(processor)])
    pixels = _pixels(processor)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
        theirs = reference(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours[..., :vocab], theirs[..., :vocab], rtol=0, atol=1e-5)
    # LLaVA's second-to-last layer: the last CLIP layer is never built
    assert model.vision_tower.model.config.num_hidden_layers == pl.TOWER["num_hidden_layers"] - 1


def test_llava_pads_images_with_llava_s_truncated_mean_colour(llava):
    """LLaVA's expand2square fills with tuple(int(x * 255) for x in image_mean): 122, not round()'s 123."""
    _, out = llava
    _, processor = load_checkpoint(str(out))
    wide = Image.new("RGB", (32, 16), (0, 0, 0))
    band = processor.process_images([wide])[0, :, 0, 0]
    mean, std = torch.tensor(processor.image_processor.image_mean), torch.tensor(processor.image_processor.image_std)
    expected = (torch.tensor([int(m * 255) for m in processor.image_processor.image_mean]) / 255 - mean) / std
    torch.testing.assert_close(band, expected.float(), rtol=0, atol=1e-6)


def test_llava_stage1_projector_alone_needs_its_llm_and_matches(llava, tmp_path):
    paths, full = llava
    with pytest.raises(UnsupportedCheckpoint, match="give --llm"):
        import_checkpoint("llava", str(paths["stage1"] / "mm_projector.bin"), str(tmp_path / "x"))
    out = tmp_path / "stage1"
    import_checkpoint("llava", str(paths["stage1"] / "mm_projector.bin"), str(out), ImportOptions(llm=str(paths["llm"])))
    stage1, processor = load_checkpoint(str(out))
    whole, _ = load_checkpoint(str(full))
    ids, pixels = torch.tensor([_image_prompt(processor)]), _pixels(processor)
    with torch.no_grad():
        torch.testing.assert_close(stage1.eval()(input_ids=ids, pixel_values=pixels).logits,
                                   whole.eval()(input_ids=ids, pixel_values=pixels).logits, rtol=0, atol=1e-6)


def test_llava_checkpoint_as_an_llm_names_the_import(llava):
    paths, _ = llava
    cfg = ModelConfig.model_validate({"llm": {"name_or_path": str(paths["full"])}})
    with pytest.raises(ConfigError, match=r"model\.llm\.name_or_path: .* 'llava_llama' checkpoint.*vlm import llava"):
        build_vlm(cfg, template="vicuna_v1", image_aspect="pad")


# ----------------------------------------------------------------------------- llava-hf


def write_llava_hf(folder, seed: int = 0, siglip: bool = False):
    """A transformers Llava folder as its save_pretrained writes it."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig

    tokenizer = train_bpe_tokenizer(pl.TEXTS, 320, ["<s>", "</s>"])
    vision = (SiglipVisionConfig if siglip else CLIPVisionConfig)(**pl.TOWER)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=pl.llama_config(len(tokenizer)).to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                         vision_feature_select_strategy="full" if siglip else "default",
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    image_processor = (SiglipImageProcessor(size={"height": 32, "width": 32}) if siglip else
                       CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                   vision_feature_select_strategy=config.vision_feature_select_strategy,
                   num_additional_image_tokens=0 if siglip else 1).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("siglip", [False, True])
def test_llava_hf_import_equals_the_source(tmp_path, siglip):
    src = write_llava_hf(tmp_path / "src", siglip=siglip)
    import_checkpoint("llava-hf", str(src), str(tmp_path / "out"))
    model, processor = load_checkpoint(str(tmp_path / "out"))
    reference = LlavaForConditionalGeneration.from_pretrained(src).eval()
    model.eval()
    short, long = _image_prompt(processor, "red"), _image_prompt(processor, "what colour is the shape? top left")
    ids = torch.full((2, len(long)), processor.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate((short, long)):  # a right-padded image batch
        ids[row, : len(prompt)], mask[row, : len(prompt)] = torch.tensor(prompt), 1
    pixels = torch.cat([_pixels(processor, 0), _pixels(processor, 1)])
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        theirs = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], rtol=0, atol=1e-5)
    # CLIP's "default" strategy drops the CLS token; SigLIP's "full" keeps every patch (it has no CLS)
    assert model.config.feature_select == "patch" and model.config.num_image_tokens == 16


def test_llava_hf_first_image_loss_equals_transformers_loss(tmp_path):
    """Training mode, an image batch with a prompt that carries no loss: the same loss as Llava's."""
    src = write_llava_hf(tmp_path / "src", seed=4)
    import_checkpoint("llava-hf", str(src), str(tmp_path / "out"))
    model, processor = load_checkpoint(str(tmp_path / "out"))
    reference = LlavaForConditionalGeneration.from_pretrained(src)
    model.train()
    reference.train()
    from vlm_core.data.templates import get_template

    conversation = [{"from": "human", "value": "<image>\nwhat colour is the shape?"}, {"from": "gpt", "value": "red"}]
    ids, labels = get_template("vicuna_v1").encode(conversation, processor.tokenizer, processor.image_token_id,
                                                   processor.num_image_tokens)
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    pixels = _pixels(processor)
    ours = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
    theirs = reference(input_ids=ids, pixel_values=pixels, labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_import_cli_and_its_one_line_errors(tmp_path):
    src = write_llava_hf(tmp_path / "src")
    runner = CliRunner()
    result = runner.invoke(main, ["import", "llava-hf", str(src), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "vlm_processor.json").exists()
    image = tmp_path / "shape.png"
    Image.new("RGB", (40, 24), (200, 30, 30)).save(image)
    chat = runner.invoke(main, ["chat", "--checkpoint", str(tmp_path / "out"), "--image", str(image),
                                "--max-new-tokens", "3", "what colour is the shape?"])
    assert chat.exit_code == 0, chat.output
    for args, message in [
        (["import", "llava-next", str(src), str(tmp_path / "x")], "unknown checkpoint format 'llava-next'; known: llava, llava-hf, qwen-vl"),
        (["import", "llava-hf", str(src), str(tmp_path / "x"), "--llm", "y"], "format 'llava-hf' does not take --llm"),
        (["import", "llava-hf", str(tmp_path / "nothing"), str(tmp_path / "x")], "no such checkpoint folder"),
    ]:
        result = runner.invoke(main, args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- qwen-vl


QWEN_VISUAL = {"heads": 4, "image_size": IMAGE, "image_start_id": None, "layers": LAYERS, "mlp_ratio": 1.5,
               "output_dim": OUT, "patch_size": 8, "width": 64}
QWEN_VOCAB = 640  # padded beyond the tokenizer, as Qwen's 151936 > 151851


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen")
    ranks = pl.qwen_ranks()
    visual_sd = qwen_vl_state_dict()
    del visual_sd["transformer.wte.weight"]  # the test's stand-in for the LLM
    llm_sd = pl.qwen_llm_state(QWEN_VOCAB)
    encoding = pl.qwen_encoding(ranks, visual=True)
    visual = {**QWEN_VISUAL, "image_start_id": encoding.encode_single_token("<img>")}
    src = pl.write_qwen(root / "Qwen-VL-Chat", {**llm_sd, **visual_sd}, pl.qwen_config(QWEN_VOCAB, visual), ranks)
    text_only = pl.write_qwen(root / "Qwen-14B-like", llm_sd, pl.qwen_config(QWEN_VOCAB, None), ranks)
    import_checkpoint("qwen-vl", str(src), str(root / "imported"))
    return {"src": src, "text_only": text_only, "ranks": ranks, "llm_sd": llm_sd, "visual_sd": visual_sd,
            "encoding": encoding, "imported": root / "imported"}


def test_qwen_vl_import_equals_the_published_forward(qwen):
    model, processor = load_checkpoint(str(qwen["imported"]))
    model.eval()
    enc = qwen["encoding"]
    img, end, pad = (enc.encode_single_token(t) for t in ("<img>", "</img>", "<imgpad>"))
    # Qwen-VL's input: "Picture 1: <img>" + 256 (here QUERIES) pads + "</img>\n" + question, in ChatML
    before = enc.encode("<|im_start|>user\nPicture 1: ", allowed_special="all") + [img]
    after = [end] + enc.encode("\nwhat colour is the shape?<|im_end|>\n<|im_start|>assistant\n", allowed_special="all")
    qwen_ids = before + [pad] * QUERIES + after
    pixels = torch.randn(1, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(5))

    embeds = qwen["llm_sd"]["transformer.wte.weight"][qwen_ids].clone()
    embeds[len(before) : len(before) + QUERIES] = reference_visual(qwen["visual_sd"], pixels)[0]
    theirs = pl.qwen_reference_logits(qwen["llm_sd"], embeds)

    ids = torch.tensor([before + [processor.image_token_id] * QUERIES + after])
    assert processor.tokenizer(processor.tokenizer.decode(qwen_ids[: len(before)]), add_special_tokens=False).input_ids == before
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert processor.template == "chatml" and processor.image_aspect == "square"
    assert model.config.feature_layer == -1 and model.projector.attn_pool.attn.num_heads == OUT // 128
    assert processor.image_token_id < QWEN_VOCAB == model.get_input_embeddings().weight.shape[0]  # no resize


def test_qwen_tokenizer_is_tiktoken_token_for_token(qwen):
    import unicodedata

    _, processor = load_checkpoint(str(qwen["imported"]))
    enc = qwen["encoding"]
    texts = ["what colour is the shape?", "12345 apples<|im_start|>user\nhi<|im_end|>", "cafe\u0301 naïve 你好",
             "Picture 1: <img>a.png</img>\n", "  two spaces\n\n\tand tabs", "don't IT'S", "<|extra_204|><imgpad>"]
    for text in texts:
        expected = enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        assert processor.tokenizer(text, add_special_tokens=False).input_ids == expected, text
        assert processor.tokenizer.decode(expected) == enc.decode(expected)
    assert processor.tokenizer.eos_token == processor.tokenizer.pad_token == "<|endoftext|>"


def test_qwen_llm_alone_becomes_a_transformers_qwen2(qwen, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="vlm.import"):
        import_checkpoint("qwen-vl", str(qwen["text_only"]), str(tmp_path / "qwen2"))
    assert "use_dynamic_ntk and use_logn_attn not carried" in caplog.text
    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen2", trust_remote_code=False).eval()
    assert llm.config.model_type == "qwen2"
    ids = qwen["encoding"].encode("<|im_start|>user\nwhere is it? top left<|im_end|>", allowed_special="all")
    with torch.no_grad():
        ours = llm(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours, pl.qwen_reference_logits(qwen["llm_sd"], qwen["llm_sd"]["transformer.wte.weight"][ids]),
                               rtol=0, atol=1e-5)
    # ... and a run config takes it as its LLM; the Qwen v1 folder itself gets the one-line pointer
    built, _ = build_vlm(ModelConfig.model_validate({"llm": {"name_or_path": str(tmp_path / "qwen2")}}),
                         template="chatml", image_aspect="square", special_tokens=["<|im_start|>", "<|im_end|>"])
    assert built.language_model.config.model_type == "qwen2"
    with pytest.raises(ConfigError, match=r"'qwen' checkpoint, which transformers loads only with remote code; convert it with `vlm import qwen-vl"):
        build_vlm(ModelConfig.model_validate({"llm": {"name_or_path": str(qwen["text_only"])}}),
                  template="chatml", image_aspect="square")


def test_qwen_vl_parts_alone_feed_a_run_config(qwen, tmp_path):
    """CodeFuse-VLM-14B's recipe: Qwen-VL's ViT + a new resampler + another Qwen LLM, by name_or_path."""
    import_checkpoint("qwen-vl", str(qwen["src"]), str(tmp_path / "vit"), ImportOptions(only="vision"))
    import_checkpoint("qwen-vl", str(qwen["text_only"]), str(tmp_path / "llm"))
    assert json.loads((tmp_path / "vit" / "config.json").read_text())["model_type"] == "qwen_vl_vit"
    cfg = ModelConfig.model_validate({
        "vision": {"encoder": "qwen_vl_vit", "name_or_path": str(tmp_path / "vit")},
        "projector": {"type": "cross_attn", "num_queries": QUERIES},
        "llm": {"name_or_path": str(tmp_path / "llm")},
    })
    model, processor = build_vlm(cfg, template="chatml", image_aspect="square", special_tokens=["<|im_start|>", "<|im_end|>"])
    imported, _ = load_checkpoint(str(qwen["imported"]))
    # the ViT's every block is kept (feature_layer defaults to the last for qwen_vl_vit) and equals the import's
    assert model.config.feature_layer == -1 and processor.image_size == IMAGE
    pixels = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(model.vision_tower(pixels), imported.vision_tower(pixels), rtol=0, atol=0)
    assert model.projector.attn_pool.attn.num_heads == OUT // 128
    with pytest.raises(UnsupportedCheckpoint, match="no vision tower to write"):
        import_checkpoint("qwen-vl", str(qwen["text_only"]), str(tmp_path / "x"), ImportOptions(only="vision"))


def test_vlm_train_on_a_checkpoint_to_import_is_one_line(llava, tmp_path):
    """`vlm train` with an LLM that must be converted first says so in one line, no traceback."""
    from click.testing import CliRunner

    from vlm_core.cli import main

    paths, _ = llava
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"llm": {"name_or_path": str(paths["full"])}},
        "data": {"datasets": {"d": {"url": str(tmp_path / "d.jsonl")}}},
        "stages": {"instruct": {"datasets": ["d"], "trainable": ["projector"], "max_steps": 1}},
        "distributed": {"deepspeed": "none"},
        "output": str(tmp_path / "out"),
    }))
    (tmp_path / "d.jsonl").write_text('{"id": "0", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}\n')
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--stage", "instruct"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a ClickException, not a crash
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert "model.llm.name_or_path" in line and "vlm import llava" in line, line

"""Instructions that turn captions and OCR text into conversations, chosen per sample, seeded.

The caption list is LLaVA's "brief image description" instruction list (LLaVA paper, appendix),
the prompts of its 558k alignment set. The OCR lists are ours: short "read the text" requests.
"""

from __future__ import annotations

import hashlib

CAPTION_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)

OCR_PROMPTS = {
    "en": (
        "What is written in the image?",
        "Read the text in the image.",
        "Transcribe all the text in this image.",
        "What does the text in the picture say?",
    ),
    "zh": (
        "图片中写了什么？",
        "请读出图片中的文字。",
        "请识别并转写这张图片里的全部文字。",
        "图中的文字内容是什么？",
    ),
}


def pick(prompts: tuple[str, ...], seed: int, sample_id: str) -> str:
    """A prompt that depends only on (seed, sample id): the same sample gets the same prompt on
    every run and in every process, whatever the order samples are read in."""
    digest = hashlib.blake2b(f"{seed}\0{sample_id}".encode(), digest_size=8).digest()
    return prompts[int.from_bytes(digest, "little") % len(prompts)]


def human_gpt(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]

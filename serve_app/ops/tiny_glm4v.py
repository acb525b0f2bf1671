"""A tiny, randomly initialised GLM-4.xV checkpoint, written fully offline.

It is a real ``Glm4vForConditionalGeneration`` checkpoint directory: config,
safetensors weights, a fast tokenizer carrying GLM's special tokens, a chat template,
the image processor's config and a generation config. It loads through exactly the
code the real ``zai-org/GLM-4.6V-Flash`` loads through (``AutoProcessor`` +
``AutoModelForImageTextToText``), so the transformers engine, its batching, its
per-request image budget and its streaming can be tested end to end on a CPU in
seconds, without a network or a model hub. Its weights are random: its text is
gibberish, which is exactly what the Structurer's fallback path is for.

    memeserve tiny-glm4v /tmp/memeserve-tiny-glm4v
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from serve_app.understanding.labels import EMOTION_ZH, EMOTIONS, INTENT_ZH, INTENTS
from serve_app.understanding.lexicon import Lexicon
from serve_app.understanding.prompts import SYSTEM_PROMPT, user_text

# GLM's special tokens, in GLM's own vocabulary order; like GLM they follow the BPE
# vocabulary. The first three and the role tags are what the chat template and the
# stop rule use; the image/video tags are what Glm4vProcessor and the model look up.
SPECIAL_TOKENS: Final[tuple[str, ...]] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "<think>",
    "</think>",
    "<|image|>",
    "<|video|>",
)

BPE_VOCAB_SIZE: Final[int] = 2048
"""Byte-level BPE vocabulary before the special tokens (256 byte symbols + merges)."""

# Written from scratch (not GLM's file) but rendering the same prompt layout:
# [gMASK]<sop>, then `<|role|>\n` + content per turn, images as
# <|begin_of_image|><|image|><|end_of_image|>, and `<|assistant|>\n` to prompt an
# answer. enable_thinking=false pre-fills an empty think block, GLM's switch for
# answering directly.
CHAT_TEMPLATE: Final[str] = (
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "{%- if message.role in ['system', 'user', 'assistant', 'observation'] -%}"
    "<|{{ message.role }}|>{{ '\\n' }}"
    "{%- if message.content is string -%}"
    "{{ message.content }}"
    "{%- else -%}"
    "{%- for part in message.content -%}"
    "{%- if part.type == 'image' or part.type == 'image_url' or 'image' in part -%}"
    "<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif part.type == 'video' or 'video' in part -%}"
    "<|begin_of_video|><|video|><|end_of_video|>"
    "{%- elif part.type == 'text' -%}"
    "{{ part.text }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "<|assistant|>{{ '\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking -%}"
    "<think></think>{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)


@dataclass(frozen=True)
class Glm4vDims:
    """The shapes of a GLM-4.xV model; the image geometry (patch 14, temporal patch 2,
    2x2 merge: one visual token per 28x28 pixels) is GLM's whatever the shapes."""

    text_layers: int
    text_hidden: int
    text_heads: int
    kv_heads: int
    text_intermediate: int
    vocab_size: int | None
    """``None``: the tokenizer's size rounded up to a multiple of 64."""
    mrope_section: tuple[int, int, int]
    """M-RoPE split of the rotated half of each head: sums to head_dim * 0.5 / 2."""
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    max_positions: int


# head_dim 64 (128 / 2 heads): vLLM's CPU attention kernels refuse head sizes below 32
# (16 was the old tiny size), and the same checkpoint must load in both engines.
# GQA as in GLM (2 query heads per KV head); M-RoPE split like GLM's [8, 12, 12] halved.
TINY_DIMS: Final[Glm4vDims] = Glm4vDims(
    text_layers=2,
    text_hidden=128,
    text_heads=2,
    kv_heads=1,
    text_intermediate=256,
    vocab_size=None,
    mrope_section=(4, 6, 6),
    vision_depth=2,
    vision_hidden=32,
    vision_heads=2,
    vision_intermediate=64,
    max_positions=8192,
)

GLM46V_FLASH_DIMS: Final[Glm4vDims] = Glm4vDims(
    text_layers=40,
    text_hidden=4096,
    text_heads=32,
    kv_heads=2,
    text_intermediate=13696,
    vocab_size=151552,
    mrope_section=(8, 12, 12),
    vision_depth=24,
    vision_hidden=1536,
    vision_heads=12,
    # transformers' Glm4vVisionConfig default (GLM-4.1V's published vision config):
    # the patch merger's width; each vision block's MLP is out_hidden_size wide.
    vision_intermediate=13696,
    max_positions=65536,
)
"""GLM-4.6V-Flash's real dimensions (GLM-4.1V-9B architecture), for the engine benchmark."""


def _training_text() -> list[str]:
    """A few KB of Chinese and English for the in-memory BPE: prompts, labels, JSON."""
    # Everyday characters and meme particles, so ordinary captions get merged tokens.
    common = (
        "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会"
        "家可下而过天去能对小多然于心学么之都好看起发当没成只如事把还用第样道想作种开美总从"
        "无情己面最女但现前些所同日手又行意动方期它头经长儿回位分爱老因很给名法间知世什两"
        "哈哦嘿呵哇嗯啦呀嘛吧哟嘻唉哎呜怼喷骂笑哭气急惨绝顶牛破防摆烂躺平内卷打工人"
    )
    lexicon = Lexicon.load()
    slang = [form for entry in lexicon.entries for form in (entry.term, *entry.aliases)]
    glosses = [entry.gloss for entry in lexicon.entries]
    fields = ["emotion", "intent", "sarcastic", "offensiveness", "confidence"]
    fields += ["explanation", "ocr_text", "slang", "true", "false"]
    labels = [*EMOTIONS, *INTENTS, *EMOTION_ZH.values(), *INTENT_ZH.values()]
    texts = [SYSTEM_PROMPT, user_text(None), user_text("这图也太真实了吧，笑死我了")]
    texts += [" ".join(fields + labels), common, " ".join(slang), "。".join(glosses)]
    for index, emotion in enumerate(EMOTIONS):
        intent = INTENTS[index % len(INTENTS)]
        answer = {
            "emotion": emotion,
            "intent": intent,
            "sarcastic": index % 3 == 0,
            "offensiveness": index % 4,
            "confidence": round(0.1 * index, 1),
            "explanation": f"图中文字表达{EMOTION_ZH[emotion]}，意图是{INTENT_ZH[intent]}。",
            "ocr_text": [slang[index]],
            "slang": [slang[index]],
        }
        texts.append(json.dumps(answer, ensure_ascii=False))
    texts.append(
        "The quick brown fox jumps over the lazy dog. Memes are images with captions; "
        "the model reads the caption, the context and the picture, and answers in JSON."
    )
    return texts


def build_tokenizer() -> Any:
    """A fast GLM-style tokenizer: byte-level BPE trained in memory plus GLM's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_training_text(), trainer=trainer)
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t != "<|endoftext|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_config(tokenizer: Any, dims: Glm4vDims = TINY_DIMS) -> Any:
    """A ``Glm4vConfig`` with ``dims`` and the tokenizer's special-token ids."""
    from transformers import Glm4vConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    stop_ids = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    head_dim = dims.text_hidden // dims.text_heads
    # GLM rotates half of each head (partial_rotary_factor 0.5); M-RoPE splits those
    # frequencies over (temporal, height, width), as [8, 12, 12] does for head_dim 128.
    assert sum(dims.mrope_section) == head_dim // 4, "mrope_section must sum to head_dim/4"
    text_config = {
        "model_type": "glm4v_text",
        "vocab_size": dims.vocab_size or -(-len(tokenizer) // 64) * 64,
        "hidden_size": dims.text_hidden,
        "intermediate_size": dims.text_intermediate,
        "num_hidden_layers": dims.text_layers,
        "num_attention_heads": dims.text_heads,
        "num_key_value_heads": dims.kv_heads,
        "max_position_embeddings": dims.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 500000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": list(dims.mrope_section),
        },
        "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": stop_ids,
    }
    vision_config = {
        "model_type": "glm4v_vision",
        "depth": dims.vision_depth,
        "hidden_size": dims.vision_hidden,
        "intermediate_size": dims.vision_intermediate,
        "num_heads": dims.vision_heads,
        "in_channels": 3,
        "image_size": 336,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "out_hidden_size": dims.text_hidden,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0},
    }
    return Glm4vConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
        tie_word_embeddings=False,
    )


def _video_processor_config(image_config: dict[str, Any]) -> dict[str, Any]:
    """``video_preprocessor_config.json`` as GLM checkpoints ship it.

    ``Glm4vVideoProcessor`` needs torchvision even to be constructed, so it cannot
    write its own config here; the file is written by hand, with the class's
    defaults, so that ``AutoProcessor`` finds it where torchvision is installed.
    """
    return {
        "video_processor_type": "Glm4vVideoProcessor",
        "processor_class": "Glm4vProcessor",
        "size": {"shortest_edge": 112 * 112, "longest_edge": 28 * 28 * 2 * 30000},
        "max_image_size": {"longest_edge": 28 * 28 * 2 * 30000},
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "do_sample_frames": True,
        "resample": image_config["resample"],
        "rescale_factor": image_config["rescale_factor"],
        "image_mean": image_config["image_mean"],
        "image_std": image_config["image_std"],
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "max_duration": 300,
        "num_frames": 16,
        "fps": 2,
    }


def build_tiny_glm4v(out_dir: Path, seed: int = 0) -> Path:
    """Write a random tiny GLM-4.xV checkpoint to ``out_dir`` and return it.

    The directory has the files of a real GLM-4.xV checkpoint: ``config.json`` and
    ``model.safetensors`` (``Glm4vForConditionalGeneration``), ``generation_config.json``,
    ``tokenizer.json`` / ``tokenizer_config.json`` / ``chat_template.jinja``,
    ``preprocessor_config.json`` (the image processor, ``processor_class:
    Glm4vProcessor``) and ``video_preprocessor_config.json``. Deterministic for a seed.
    """
    import torch
    from transformers import GenerationConfig, Glm4vForConditionalGeneration
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    from transformers.utils import logging as hf_logging

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config).eval()
    stop_ids = config.text_config.eos_token_id
    model.generation_config = GenerationConfig(
        eos_token_id=stop_ids,
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir)
    finally:
        if progress:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out_dir)

    # Glm4vProcessor cannot be constructed without torchvision in transformers 5.x (its
    # video processor is mandatory and torchvision-only), so the processor's files
    # are written component by component, in the layout GLM's own checkpoints use:
    # the image processor's config names Glm4vProcessor as its processor class.
    Glm4vImageProcessorPil().save_pretrained(out_dir)
    image_path = out_dir / "preprocessor_config.json"
    image_config = json.loads(image_path.read_text(encoding="utf-8"))
    image_config["image_processor_type"] = "Glm4vImageProcessor"
    image_config["processor_class"] = "Glm4vProcessor"
    _write_json(image_path, image_config)
    _write_json(out_dir / "video_preprocessor_config.json", _video_processor_config(image_config))
    return out_dir


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def parameter_count(model_dir: Path) -> int:
    """Number of parameters stored in ``model_dir``'s safetensors files."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                count = 1
                for size in handle.get_slice(name).get_shape():
                    count *= size
                total += count
    return total

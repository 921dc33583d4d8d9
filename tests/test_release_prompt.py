"""The 7B recipes' prompt against the release's own tokenisation.

The PiTe release (and VTimeLLM) build "<video>\\n" + query in the Vicuna v1 template and tokenise it with the slow
LLaMA tokenizer chunk by chunk around the placeholder (LLaVA's `tokenizer_image_token`): the text before the video
with its BOS, the video index, the text after it without a BOS. The slow tokenizer is sentencepiece itself, so the
reference here is `SentencePieceProcessor.encode` on each chunk, with a LLaMA-like model trained locally.
"""

from __future__ import annotations

import io
import json

import pytest

from model.conversation import TEMPLATES, first_message, render
from model.labels import encode_conversation, encode_prompt
from model.tokenizer import load_tokenizer

spm = pytest.importorskip("sentencepiece")

TEXTS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions.",
    "USER: Could you please describe the events in the video in detail? ASSISTANT: From 12 to 40, a man rolls it.",
    "During which frames can we see a dog jumping over the fence? The red ball stops near the wall.",
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A sentencepiece BPE with LLaMA's normaliser settings (dummy prefix, spaces kept, byte fallback, digits split)
    and the transformers tokenizer converted from it, as a vicuna dir holds them."""
    out = tmp_path_factory.mktemp("vicuna-tok")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS * 40), model_writer=buf, vocab_size=420, model_type="bpe", byte_fallback=True,
        split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, normalization_rule_name="identity", minloglevel=2)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": True}))
    return out


def release_ids(sp, text: str, video_id: int) -> list[int]:
    """tokenizer_image_token with the slow tokenizer: BOS + chunk ids, the video index between chunks."""
    before, after = text.split("<video>")
    return [sp.bos_id()] + sp.encode(before) + [video_id] + sp.encode(after)


def test_generation_prompt_matches_the_release(llama_dir):
    sp = spm.SentencePieceProcessor(model_file=str(llama_dir / "tokenizer.model"))
    tok = load_tokenizer(llama_dir)
    vid = tok.convert_tokens_to_ids("<video>")
    template = TEMPLATES["release"]
    query = "During which frames can we see a dog jumping over the fence?"
    # the release's inference.py: conv.append_message(USER, "<video>\n" + query); append_message(ASSISTANT, None)
    text = f"{template.system} USER: <video>\n{query} ASSISTANT:"
    ours = encode_prompt(tok, template, vid, query, n_video=1).tolist()
    assert ours == release_ids(sp, text, vid)


def test_training_conversation_matches_the_release(llama_dir):
    sp = spm.SentencePieceProcessor(model_file=str(llama_dir / "tokenizer.model"))
    tok = load_tokenizer(llama_dir)
    vid = tok.convert_tokens_to_ids("<video>")
    template = TEMPLATES["release"]
    turns = [("user", first_message(template, "Could you please describe the events in the video in detail?", 100)),
             ("assistant", "From 12 to 40, a man rolls it."), ("user", "And then?"), ("assistant", "It stops.")]
    rendered = render(template, turns)
    enc = encode_conversation(tok, rendered, vid, 1, [], max_length=4096)
    # VTimeLLM's preprocess_v1 tokenises the whole rendered conversation with tokenizer_image_token; sep2 is "</s>",
    # which sentencepiece reads as text, so it is compared as the eos id the tokenizer gives it.
    pieces = rendered.text.split("</s>")
    expected = release_ids(sp, pieces[0], vid)
    for chunk in pieces[1:]:
        expected += [sp.eos_id()] + (sp.encode(chunk) if chunk else [])
    assert enc.input_ids == expected


@pytest.mark.parametrize("legacy", [True, False])
def test_chunks_match_the_release_whatever_the_legacy_flag(llama_dir, tmp_path, legacy):
    """Why the release template tokenises in chunks: with `legacy: false` (as a tokenizer_config may say) one pass
    over the text gives no "▁" after the video, where the release's chunked slow tokenizer has one."""
    import shutil

    shutil.copytree(llama_dir, tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": legacy}))
    sp = spm.SentencePieceProcessor(model_file=str(llama_dir / "tokenizer.model"))
    tok = load_tokenizer(tmp_path / "tok")
    vid = tok.convert_tokens_to_ids("<video>")
    chunked = TEMPLATES["release"]
    one_pass = type(chunked)(**{**chunked.to_dict(), "split_at_video": False})
    text = f"{chunked.system} USER: <video>\nWhat happens? ASSISTANT:"
    a = encode_prompt(tok, chunked, vid, "What happens?", n_video=1).tolist()
    b = encode_prompt(tok, one_pass, vid, "What happens?", n_video=1).tolist()
    assert a == release_ids(sp, text, vid)
    after_a, after_b = a[a.index(vid) + 1:], b[b.index(vid) + 1:]
    assert tok.convert_ids_to_tokens(after_a[:1]) == ["▁"]
    assert after_b == (after_a if legacy else after_a[1:])

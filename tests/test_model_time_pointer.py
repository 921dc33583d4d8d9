"""The time pointer: digit tokens read off tokenizers, frame -> number shares, a zero term until it trains, its
term in forward and generate (batched, padded), checkpoints, and that it learns to point at an event's frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotate.errors import ConfigError
from model.batch import collate
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import PiteConfig
from model.conversation import TEMPLATES, format_span
from model.factory import TinyLlamaSettings, build_tiny
from model.labels import IGNORE_INDEX, Example, encode_prompt
from model.time_pointer import N_NUMBERS, frame_to_numbers, time_token_ids
from model.tokenizer import train_tokenizer

D, S = 768, 8  # the 8 slots are the RGB cube's corners: red among them
TEXTS = ["the red square enters the frame", "When does the red square enter?", "When does the blue square enter?"]
TEXTS += [format_span(i, 99 - i) for i in range(100)]
TINY = TinyLlamaSettings(hidden_size=32, intermediate_size=64, vocab_size=300, rope_theta=1e6)


def _config(**kw):
    return PiteConfig(n_points=1, n_frames=10, adapter="colour_slots", adapter_slots=S, head_shift=1,
                      time_pointer=True, **kw)


def test_digit_tokens_are_read_off_the_tokenizer():
    _, tok = build_tiny(TEXTS, _config(), TINY)  # ours: " 2" then "3", whatever the BPE would merge
    tens, units = time_token_ids(tok)
    assert tens == [tok.convert_tokens_to_ids(f"Ġ{d}") for d in range(10)]
    assert units == [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    assert tok.decode(tok("From 05 to 2023.", add_special_tokens=False)["input_ids"]) == "From 05 to 2023."
    # a BPE that learned "00", "37" ... as whole tokens cannot be pointed at digit by digit
    merged = train_tokenizer([format_span(i, i) for i in range(100)] * 30, vocab_size=400)
    with pytest.raises(ConfigError, match="not one per digit"):
        time_token_ids(merged)


def test_frame_shares_cover_the_numbers():
    assert torch.allclose(frame_to_numbers(100), torch.eye(100))
    ten = frame_to_numbers(10)
    assert torch.allclose(ten.sum(1), torch.ones(10)) and torch.allclose(ten[3, 30:40], torch.full((10,), 0.1))
    odd = frame_to_numbers(37)
    assert torch.allclose(odd.sum(1), torch.ones(37), atol=1e-6)
    assert torch.allclose(odd.sum(0) / 37, torch.full((N_NUMBERS,), 0.01), atol=1e-6)  # uniform in, uniform out


def test_the_time_pointer_needs_the_colour_slots_adapter():
    with pytest.raises(ConfigError, match="colour_slots"):
        PiteConfig(adapter="linear", time_pointer=True)


def _prompt_ids(model, tok, query: str, n: int) -> torch.Tensor:
    return encode_prompt(tok, TEMPLATES["pite"], model.video_token_id, query, n)


def _example(model, tok, frames: torch.Tensor, query: str, answer: str) -> Example:
    prompt = _prompt_ids(model, tok, query, len(frames))
    reply = torch.tensor(tok(answer + "</s>", add_special_tokens=False)["input_ids"])
    ids = torch.cat([prompt, reply])
    labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), reply])
    return Example(input_ids=ids, labels=labels, video=frames, head_pos=torch.zeros(0, dtype=torch.long),
                   loc_target=torch.zeros(0, 2), loc_mask=torch.zeros(0, dtype=torch.bool),
                   traj_target=torch.zeros(0, 1, 10, 2), traj_mask=torch.zeros(0, 1, 10, dtype=torch.bool))


def _clip(enter: int, n: int = 10, seed: int = 0, colour=(1.0, 0.0, 0.0), also=None) -> torch.Tensor:
    """A grey clip (16x16 thumbnails) where a square of `colour` appears at frame `enter` and wanders after;
    `also` = (frame, colour): a second square."""
    rng = np.random.default_rng(seed)
    frames = np.full((n, 16, 16, 3), 0.5, np.float32) + rng.normal(0, 0.02, (n, 16, 16, 3)).astype(np.float32)
    for start, rgb in [(enter, colour)] + ([also] if also else []):
        y, x = rng.integers(2, 11, 2)
        for t in range(start, n):
            y, x = np.clip([y + rng.integers(-1, 2), x + rng.integers(-1, 2)], 0, 12)
            frames[t, y:y + 3, x:x + 3] = rgb
    return torch.from_numpy(frames.reshape(n, -1))


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    model, tok = build_tiny(TEXTS, _config(), TINY)
    plain, _ = build_tiny(TEXTS, PiteConfig(**{**_config().to_dict(), "time_pointer": False}), TINY)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("time_pointer.")})
    examples = [_example(model, tok, _clip(e, seed=e), "When does the red square enter?",
                         f"From {10 * e:02d} to 99.") for e in (2, 5, 7)]
    return model, plain, tok, examples


def test_an_untrained_pointer_adds_nothing_but_the_span_rule(world):
    model, plain, tok, examples = world
    # answers without a span: exactly the plain model
    no_span = [_example(model, tok, ex.video, "When does the red square enter?", "At 20.") for ex in examples]
    batch = collate(no_span, tok.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(model(**batch).lm_loss, plain(**batch).lm_loss, atol=1e-6)
    prompt = _prompt_ids(model, tok, "When does the red square enter?", 10)
    a = model.generate(prompt, video_features=examples[0].video, max_new_tokens=6, stop_token_ids=[])[0]
    b = plain.generate(prompt, video_features=examples[0].video, max_new_tokens=6, stop_token_ids=[])[0]
    assert a.token_ids == b.token_ids
    # in "From 20 to 99." only the end's digits change: they cannot go below the start
    ex = examples[0]
    with torch.no_grad():
        mine, theirs = (m(**collate([ex], tok.pad_token_id)).logits[0].float() for m in (model, plain))
    digits = [tok.convert_tokens_to_ids(t) for d in range(10) for t in (str(d), f"Ġ{d}")]
    others = torch.ones(mine.shape[-1], dtype=torch.bool)
    others[digits] = False
    assert torch.allclose(mine[:, others], theirs[:, others], atol=1e-5)  # only digit logits move
    changed = ((mine - theirs).abs().amax(-1) > 1e-5).nonzero().flatten().tolist()
    to = ex.input_ids.tolist().index(tok.convert_tokens_to_ids("Ġto")) + (S - 1) * 10  # 10 frames, 8 tokens each
    assert changed and min(changed) >= to  # from " to" on: the end's digits (and the harmless "." after)


def test_the_end_of_a_span_is_read_at_or_after_its_start():
    model, tok = build_tiny(TEXTS, PiteConfig(**{**_config().to_dict(), "n_frames": 100}), TINY)
    tp = model.time_pointer
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    def floor_at(text):
        recent = torch.tensor([([-1] * 6 + ids(text))[-6:]])
        return int(tp.span_floor(recent)[0])
    assert floor_at("From 45 to") == 45 and floor_at("From 45 to ") == 45 and floor_at("From 45 to 6") == 45
    assert floor_at("From 45") == -1 and floor_at("From 4") == -1 and floor_at("From") == -1
    assert floor_at("From 45 to 67.") == 67  # harmless: the next token is no digit
    assert floor_at("From 45 to 67, the red square stops. From") == -1
    # the pointer's numbers are renormalised over those >= the start
    keys = torch.zeros(100, S, tp.dim)
    keys[30, 0] = keys[60, 0] = 1.0
    with torch.no_grad():
        tp.read_out.bias.fill_(50.0)
    hidden = torch.ones(1, 32)
    before = tp.logit_bias(hidden, torch.tensor(ids("From")[-1:]), keys, len(tok))
    after = tp.logit_bias(hidden, torch.tensor(ids("From")[-1:]), keys, len(tok), floor=torch.tensor([45]))
    three, six = tok.convert_tokens_to_ids("Ġ3"), tok.convert_tokens_to_ids("Ġ6")  # tens digits
    assert abs(before[0, three] - before[0, six]) < 1e-3  # two frames alike: 30 and 60
    assert after[0, six] > after[0, three] + 5  # from 45 on, only 60 is left


def test_a_pointer_at_one_frame_writes_its_number():
    model, tok = build_tiny(TEXTS, PiteConfig(**{**_config().to_dict(), "n_frames": 100}), TINY)
    tp = model.time_pointer
    hidden = torch.ones(2, 32)
    keys = torch.zeros(100, S, tp.dim)
    keys[37, 1] = 1.0  # frame 37, slot 1: the only key along the query
    with torch.no_grad():
        tp.read_out.bias.fill_(50.0)  # a constant query: q . k = 50 d for that key, 0 for the others
    numbers = tp.numbers(hidden, keys)
    assert numbers[0].argmax() == 37 and numbers[0, 37] > 0.99
    tens = torch.tensor([tok.convert_tokens_to_ids(f"Ġ{d}") for d in range(10)])  # " 3"
    units = torch.tensor([tok.convert_tokens_to_ids(str(d)) for d in range(10)])  # "7"
    inputs = torch.tensor([tok.convert_tokens_to_ids("From"), tens[3]])  # before the tens digit; after it
    bias = tp.logit_bias(hidden, inputs, keys, len(tok))
    assert bias[0, tens].argmax() == 3 and bias[1, units].argmax() == 7
    assert torch.allclose(bias[0, tens[3]], torch.log(torch.tensor(10.0)), atol=1e-3)
    assert bias[0, units].abs().max() == 0 and bias[1, tens].abs().max() == 0  # each state its own digits
    others = torch.ones(len(tok), dtype=torch.bool)
    others[tens] = others[units] = False
    assert bias[:, others].abs().max() == 0  # only digit tokens are touched


def test_replace_mix_keeps_the_lms_digit_mass_in_the_pointers_proportions():
    model, tok = build_tiny(TEXTS, PiteConfig(**{**_config().to_dict(), "n_frames": 100}), TINY)
    tp = model.time_pointer
    hidden = torch.ones(2, 32)
    keys = torch.zeros(100, S, tp.dim)
    keys[37, 1], keys[62, 1] = 1.0, 0.98  # two frames along the query
    with torch.no_grad():
        tp.read_out.bias.fill_(2.0)
    tens = torch.tensor([tok.convert_tokens_to_ids(f"Ġ{d}") for d in range(10)])
    units = torch.tensor([tok.convert_tokens_to_ids(str(d)) for d in range(10)])
    inputs = torch.tensor([tok.convert_tokens_to_ids("From"), tens[3]])  # before the tens digit; after it
    logits = torch.randn(2, len(tok)) * 3
    logits[0, tens[8]] += 10  # an LM sure of " 8" and "8": replace gives them only the LM's digit mass
    logits[1, units[8]] += 10
    mixed = tp.mix(logits, hidden, inputs, keys, replace=True)
    p_lm, p_mixed = torch.softmax(logits, -1), torch.softmax(mixed, -1)
    numbers = tp.numbers(hidden, keys).view(2, 10, 10)
    for row, group, want in ((0, tens, numbers[0].sum(-1)), (1, units, numbers[1, 3] / numbers[1, 3].sum())):
        assert torch.allclose(p_mixed[row, group].sum(), p_lm[row, group].sum(), atol=1e-5)  # whether a digit
        assert torch.allclose(p_mixed[row, group] / p_mixed[row, group].sum(), want, atol=1e-4)  # which: pointer
        others = torch.ones(len(tok), dtype=torch.bool)
        others[group] = False
        assert torch.allclose(p_mixed[row, others], p_lm[row, others], atol=1e-6)
    assert mixed[0, tens].argmax() == 3 and mixed[1, units].argmax() == 7
    product = tp.mix(logits, hidden, inputs, keys)  # the LM's digit logits stay: a second expert
    assert torch.allclose(product, logits + tp.logit_bias(hidden, inputs, keys, len(tok)))
    with pytest.raises(ConfigError, match="time_pointer_mix"):
        _config(time_pointer_mix="sum")


def test_forward_and_generate_agree_and_batch_with_the_pointer_on(world):
    model, _, tok, examples = world
    model.eval()
    with torch.no_grad():
        model.time_pointer.read_out.weight.normal_(0, 1.0)
    try:
        right = model(**collate(examples, tok.pad_token_id, "right"))
        left = model(**collate(examples, tok.pad_token_id, "left"))
        alone = [model(**collate([ex], tok.pad_token_id)) for ex in examples]
        assert torch.isclose(right.sums["lm"], left.sums["lm"], rtol=1e-5)
        assert torch.isclose(right.sums["lm"], sum(o.sums["lm"] for o in alone), rtol=1e-5)

        prompt = _prompt_ids(model, tok, "When does the red square enter?", 10)
        (gen,) = model.generate(prompt, video_features=examples[1].video, max_new_tokens=6, stop_token_ids=[])
        ids = torch.cat([prompt, torch.tensor(gen.token_ids)])
        labels = ids.clone()
        labels[: len(prompt)] = IGNORE_INDEX
        with torch.no_grad():
            out = model(ids[None], video_features=examples[1].video[None], labels=labels[None])
        p = len(prompt) + 10 * (S - 1)
        assert out.logits[0, p - 1: p + len(gen.token_ids) - 1].argmax(-1).tolist() == gen.token_ids

        other = _prompt_ids(model, tok, "When does it enter?", 10)
        length = max(len(prompt), len(other))
        ids = torch.full((2, length), tok.pad_token_id)
        mask = torch.zeros((2, length), dtype=torch.long)
        for i, q in enumerate([prompt, other]):
            ids[i, length - len(q):], mask[i, length - len(q):] = q, 1
        videos = [examples[1].video, examples[2].video]
        batched = model.generate(ids, attention_mask=mask, video_features=videos, max_new_tokens=6)
        singles = [model.generate(q, video_features=v, max_new_tokens=6)[0] for q, v in zip([prompt, other], videos)]
        assert [g.token_ids for g in batched] == [g.token_ids for g in singles]
    finally:
        with torch.no_grad():
            model.time_pointer.read_out.weight.zero_()


def test_checkpoints_keep_the_pointer_and_older_ones_load(world, tmp_path):
    model, plain, tok, examples = world
    with torch.no_grad():
        model.time_pointer.read_out.weight.normal_(0, 1.0)
    try:
        batch = collate(examples, tok.pad_token_id)
        with torch.no_grad():
            before = model(**batch).lm_loss
        save_checkpoint(model, tok, tmp_path / "ck", TEMPLATES["pite"])
        loaded, _, _ = load_checkpoint(tmp_path / "ck")
        assert loaded.config.time_token_ids == model.config.time_token_ids
        with torch.no_grad():
            assert torch.allclose(loaded(**batch).lm_loss, before, atol=1e-6)
    finally:
        with torch.no_grad():
            model.time_pointer.read_out.weight.zero_()
    # a checkpoint saved without a pointer, loaded with one switched on, behaves as before (the pointer is soft)
    import json

    save_checkpoint(plain, tok, tmp_path / "old", TEMPLATES["pite"])
    meta = json.loads((tmp_path / "old" / "pite.json").read_text())
    meta["model"].update(time_pointer=True, time_token_ids=model.config.time_token_ids)
    (tmp_path / "old" / "pite.json").write_text(json.dumps(meta))
    upgraded, _, _ = load_checkpoint(tmp_path / "old")
    assert upgraded.time_pointer is not None
    no_span = collate([_example(model, tok, ex.video, "When does the red square enter?", "At 20.") for ex in examples],
                      tok.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(upgraded(**no_span).lm_loss, plain(**no_span).lm_loss, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mix", ["product", "replace"])
def test_it_learns_to_point_at_the_frame_the_named_object_enters(mix):
    """Train pointer and LLM on "When does the red/blue square enter?" over clips where both enter, each at a
    random frame: the answer's tens digit (the frame, 10 frames a clip) is then right on clips it never saw, so the
    pointer found the event and the question's colour chose which (a pointer that ignored the colour would be
    right about half the time)."""
    torch.manual_seed(0)
    model, tok = build_tiny(TEXTS, _config(time_pointer_mix=mix), TINY)
    model.set_trainable(adapter=True, lora=False, loc_head=False, traj_head=False, llm=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    rng = np.random.default_rng(0)

    def draw(seed):
        enters, which = rng.integers(1, 10, 2), int(rng.integers(2))
        frames = _clip(int(enters[0]), seed=seed, colour=(1.0, 0.0, 0.0),
                       also=(int(enters[1]), (0.0, 0.0, 1.0)))
        return frames, f"When does the {('red', 'blue')[which]} square enter?", int(enters[which])

    for step in range(250):
        batch = [draw(1000 * step + i) for i in range(8)]
        batch = collate([_example(model, tok, f, q, f"From {10 * e:02d} to 99.") for f, q, e in batch],
                        tok.pad_token_id)
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()
    hits = 0
    for i in range(20):
        frames, query, enter = draw(99_000 + i)
        (gen,) = model.generate(_prompt_ids(model, tok, query, 10), video_features=frames, max_new_tokens=4,
                                tokenizer=tok)
        hits += gen.text.strip().startswith(f"From {enter}")
    assert hits >= 17, hits


def test_what_trains_with_the_time_pointer(world):
    model = world[0]
    trains = lambda: {p.requires_grad for p in model.time_pointer.parameters()}  # noqa: E731
    model.set_trainable(adapter=False, lora=False, loc_head=False, traj_head=False, llm=True)
    assert trains() == {True}  # with the LLM by default
    model.set_trainable(adapter=False, lora=False, loc_head=False, traj_head=False, llm=True, time_pointer=False)
    assert trains() == {False}
    model.set_trainable(adapter=False, lora=False, loc_head=False, traj_head=False, llm=False, time_pointer=True)
    assert trains() == {True} and not any(p.requires_grad for p in model.llm.parameters())


def test_a_pointer_with_word_vectors_of_its_own_generates_like_its_forward():
    model, tok = build_tiny(TEXTS, PiteConfig(**{**_config().to_dict(), "time_pointer_reads": "words"}), TINY)
    assert model.time_pointer.words.num_embeddings == model.llm.get_input_embeddings().num_embeddings
    with torch.no_grad():
        model.time_pointer.read_out.weight.normal_(0, 1.0)
        model.time_pointer.read_q.weight.normal_(0, 1.0)
    model.eval()
    video = _clip(4, seed=3)
    prompt = _prompt_ids(model, tok, "When does the red square enter?", 10)
    (gen,) = model.generate(prompt, video_features=video, max_new_tokens=6, stop_token_ids=[])
    ids = torch.cat([prompt, torch.tensor(gen.token_ids)])
    labels = ids.clone()
    labels[: len(prompt)] = IGNORE_INDEX
    with torch.no_grad():
        out = model(ids[None], video_features=video[None], labels=labels[None])
    p = len(prompt) + 10 * (S - 1)
    assert out.logits[0, p - 1: p + len(gen.token_ids) - 1].argmax(-1).tolist() == gen.token_ids

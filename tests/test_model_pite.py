"""The PiteModel: splicing, heads, padding invariance, masked losses, head_shift, LoRA, generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.batch import collate
from model.config import LabelConfig, LoraSettings, PiteConfig
from model.conversation import TEMPLATES
from model.factory import TinyLlamaSettings, build_tiny
from model.labels import IGNORE_INDEX, build_examples, encode_prompt
from model.losses import lm_sum, masked_l1_sum, normalise, target_counts
from model.pite import position_ids_from_mask

T, K, D = 5, 3, 768
CAPTIONS = ["the red ball and the red cube", "a cat jumps over the blue box", "a dog runs left"]
TINY = TinyLlamaSettings(vocab_size=300)


def _sample(caption, phrases, seed):
    rng = np.random.default_rng(seed)
    spans, at = [], 0
    for p in phrases:
        s = caption.index(p, at)
        spans.append((s, s + len(p)))
        at = s + 1
    n = len(spans)
    vis = rng.random((n, K, T)) > 0.3
    vis[:, 0, :2] = True  # visible at frame 0 and at the grounding frame 1
    return {
        "meta": {"video_id": f"v{seed}", "caption": caption, "duration": 5.0,
                 "objects": [{"phrase": caption[s:e], "char_span": [s, e], "frame": 1} for s, e in spans]},
        "traj": rng.random((n, K, T, 2)).astype(np.float16),
        "vis": vis,
        "feat": rng.standard_normal((T, D)).astype(np.float16),
    }


SAMPLES = [
    ("the red ball and the red cube", ["the red ball", "the red cube"]),
    ("a cat jumps over the blue box", ["a cat", "the blue box"]),
    ("a dog runs left", ["a dog"]),
]


def _build(seed=0, **config):
    config = PiteConfig(**{"n_points": K, "n_frames": T, "lora": LoraSettings(r=4, alpha=8, dropout=0.0), **config})
    return build_tiny(CAPTIONS * 2, config, TINY, seed=seed)


@pytest.fixture(scope="module")
def world():
    model, tok = _build()
    torch.manual_seed(0)  # LoRA's init draws from the global generator: fix it so tests do not depend on order
    model.apply_lora()
    with torch.no_grad():  # LoRA's B starts at zero: give it values so the adapter matters in these tests
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    examples = {}
    for stage in (1, 2):
        examples[stage] = []
        for i, (caption, phrases) in enumerate(SAMPLES):
            exs, _ = build_examples(_sample(caption, phrases, i), tok, TEMPLATES["pite"], model.video_token_id,
                                    LabelConfig(stage=stage))
            examples[stage] += exs
    return model, tok, examples


def _mixed(examples):
    return examples[2][:2] + examples[1][2:]  # two clips (T frames) and a single frame (T = 1)


def test_forward_backward_splices_video_and_trains_both_heads(world):
    model, tok, examples = world
    model.zero_grad()
    batch = collate(_mixed(examples), tok.pad_token_id)
    assert [0 if v is None else len(v) for v in batch["video_features"]] == [T, T, 1]
    out = model(**batch)
    assert out.lm_loss > 0 and out.loc_loss > 0 and out.traj_loss > 0
    assert out.counts["loc"].item() == 1 and out.counts["traj"].item() == int(batch["traj_mask"].sum())
    out.loss.backward()
    for name in ("vision_adapter", "localization_projector", "trajectory_projector"):
        assert getattr(model, name).weight.grad.abs().sum() > 0, name
    lora_grads = [p.grad for n, p in model.llm.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert all(p.grad is None for n, p in model.llm.named_parameters() if "lora_" not in n)  # base frozen

    # the spliced positions hold exactly the adapted features
    embeds = model.embed(batch["input_ids"], batch["video_features"])[0]
    at = (batch["input_ids"][0] == model.video_token_id).nonzero().squeeze(1)
    expected = model.vision_adapter(batch["video_features"][0])
    assert torch.allclose(embeds[0, at], expected, atol=1e-6)
    # and the features matter
    changed = dict(batch, video_features=[v + 1.0 for v in batch["video_features"]])
    assert not torch.isclose(model(**changed).loss, out.loss)


def test_left_and_right_padding_give_the_same_losses(world):
    model, tok, examples = world
    model.eval()
    exs = _mixed(examples)
    with torch.no_grad():
        right = model(**collate(exs, tok.pad_token_id, "right"))
        left = model(**collate(exs, tok.pad_token_id, "left"))
    for name in ("loss", "lm_loss", "loc_loss", "traj_loss"):
        assert abs(getattr(right, name).item() - getattr(left, name).item()) < 1e-5, name
    assert torch.allclose(right.traj_pred, left.traj_pred, atol=1e-5)
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


def test_padding_and_batching_add_nothing_to_the_sums(world):
    """The batch's loss sums equal the sum over examples run alone: pads and other rows contribute nothing."""
    model, tok, examples = world
    model.eval()
    exs = _mixed(examples)
    with torch.no_grad():
        together = model(**collate(exs, tok.pad_token_id, "left"))
        alone = [model(**collate([ex], tok.pad_token_id)) for ex in exs]
    for key in ("lm", "loc", "traj"):
        assert torch.isclose(together.sums[key], sum(o.sums[key] for o in alone), rtol=1e-5), key
        assert together.counts[key] == sum(o.counts[key] for o in alone)
    # the LM count is the answer tokens: video and prompt tokens are never labelled
    for ex in exs:
        assert (ex.labels[ex.input_ids == model.video_token_id] == IGNORE_INDEX).all()
    assert together.counts["lm"] == sum(int((ex.labels[1:] != IGNORE_INDEX).sum()) for ex in exs)


def test_masked_l1_on_hand_made_tensors():
    pred = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]],
                         [[0.5, 0.5], [9.0, 9.0], [0.0, 0.0]]])  # (2 tokens, 3 points, xy)
    target = torch.tensor([[[1.0, 0.0], [1.0, 3.0], [float("nan"), 0.0]],
                           [[0.5, 1.5], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False],  # a point that is not visible (target NaN): ignored
                         [True, False, False]])
    total, count = masked_l1_sum(pred, target, mask)
    # points: |0-1|,|0-0| -> 0.5 ; |1-1|,|1-3| -> 1.0 ; |.5-.5|,|.5-1.5| -> 0.5
    assert count.item() == 3 and total.item() == pytest.approx(2.0)
    assert normalise(total, count).item() == pytest.approx(2.0 / 3)
    assert normalise(total, count, global_count=8).item() == pytest.approx(0.25)
    assert normalise(total * 0, torch.tensor(0)).item() == 0.0  # no points: 0, not NaN (count clamped to 1)
    pred.requires_grad_(True)
    masked_l1_sum(pred, target, mask)[0].backward()
    assert pred.grad[~mask].abs().sum() == 0


def test_lm_sum_ignores_unlabelled_positions():
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 2] = 10.0  # predicts label at position 1
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX]])
    total, count = lm_sum(logits, labels)
    expected = -torch.log_softmax(logits[0, 0], -1)[2]
    assert count.item() == 1 and torch.isclose(total, expected)


def test_global_counts_normalise_losses(world):
    model, tok, examples = world
    batch = collate(_mixed(examples), tok.pad_token_id)
    with torch.no_grad():
        local = model(**batch)
        counts = {k: 4 * v for k, v in target_counts(batch).items()}
        scaled = model(**batch, counts=counts)
    assert target_counts(batch)["traj"] == local.counts["traj"] and target_counts(batch)["lm"] == local.counts["lm"]
    for key in ("lm_loss", "loc_loss", "traj_loss"):
        assert torch.isclose(getattr(scaled, key), getattr(local, key) / 4, rtol=1e-5)


def test_head_shift_reads_the_token_or_the_one_before(world):
    model, tok, examples = world
    model.eval()
    batch = collate(examples[2], tok.pad_token_id)
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["video_features"])[0]
        hidden = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                           position_ids=position_ids_from_mask(batch["attention_mask"]),
                           output_hidden_states=True).hidden_states[-1]
        at_token = model.read_heads(hidden[batch["head_batch"], batch["head_pos"]])[1]
        before = model.read_heads(hidden[batch["head_batch"], batch["head_pos"] - 1])[1]
        shift0 = model(**batch).traj_pred
        model.config.head_shift = 1
        try:
            shift1 = model(**batch).traj_pred
        finally:
            model.config.head_shift = 0
    assert torch.allclose(shift0, at_token, atol=1e-6) and torch.allclose(shift1, before, atol=1e-6)
    assert not torch.allclose(shift0, shift1, atol=1e-3)


def test_trajectory_head_starts_as_repeated_localisation_head():
    model, _ = _build(seed=3)
    w, b = model.localization_projector.weight, model.localization_projector.bias
    tw = model.trajectory_projector.weight.view(K, T, 2, -1)
    tb = model.trajectory_projector.bias.view(K, T, 2)
    assert torch.equal(tw, w.expand(K, T, 2, w.shape[1])) and torch.equal(tb, b.expand(K, T, 2))
    h = torch.randn(4, w.shape[1])
    loc, traj = model.read_heads(h)
    assert torch.allclose(traj, loc[:, None, None, :].expand_as(traj), atol=1e-6)


def test_lora_targets_every_linear_but_lm_head_or_the_configured_ones():
    model, _ = _build()
    model.apply_lora()
    wrapped = {n.split(".lora_A")[0] for n, _ in model.llm.named_parameters() if "lora_A" in n}
    names = {n.split(".")[-1] for n in wrapped}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head" in n for n in wrapped)
    assert all(p.requires_grad for p in model.vision_adapter.parameters())  # adapter and heads train fully

    model2, _ = _build(lora=LoraSettings(r=2, alpha=4, dropout=0.0, targets=["q_proj", "v_proj"]))
    model2.apply_lora()
    names2 = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model2.llm.named_parameters() if "lora_A" in n}
    assert names2 == {"q_proj", "v_proj"}
    model2.set_trainable(adapter=False, lora=True, loc_head=True, traj_head=False)
    assert not model2.vision_adapter.weight.requires_grad and not model2.trajectory_projector.weight.requires_grad
    assert set(model2.trainable_state_dict()) == (
        {n for n, p in model2.named_parameters() if "lora_" in n} | {"localization_projector.weight",
                                                                    "localization_projector.bias"})


def test_gradient_checkpointing_gives_the_same_loss_and_grads(world):
    _, tok, examples = world
    results = []
    for checkpointing in (False, True):
        model, _ = _build(seed=1)
        model.apply_lora()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        out = model(**collate(_mixed(examples), tok.pad_token_id))
        out.loss.backward()
        results.append((out.loss.detach(), model.vision_adapter.weight.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0]) and torch.allclose(results[0][1], results[1][1], atol=1e-6)


@pytest.mark.parametrize("shift", [0, 1])
def test_generate_returns_a_trajectory_per_token_matching_a_full_forward(world, shift):
    model, tok, _ = world
    model.config.head_shift = shift
    try:
        video = torch.randn(T, D)
        prompt = encode_prompt(tok, TEMPLATES["pite"], model.video_token_id, "describe the video", T)
        # no stop token: six tokens, the last never fed back (head_shift 0 needs one more step for it)
        (gen,) = model.generate(prompt, video_features=video, max_new_tokens=6, tokenizer=tok, stop_token_ids=[])
        n = len(gen.token_ids)
        assert n == 6 and gen.trajectories.shape == (n, K, T, 2) and gen.locations.shape == (n, 2)
        assert gen.text == tok.decode(gen.token_ids) and len(gen.token_spans) == n
        assert gen.token_spans[-1][1] == len(gen.text)
        # a full forward over prompt + answer agrees: greedy tokens and the heads at the readout positions
        ids = torch.cat([prompt, torch.tensor(gen.token_ids)])[None]
        model.eval()
        with torch.no_grad():
            hidden = model.llm(inputs_embeds=model.embed(ids, video[None])[0], output_hidden_states=True)
        logits, states = hidden.logits[0], hidden.hidden_states[-1][0]
        p = len(prompt)
        assert logits[p - 1: p + n - 1].argmax(-1).tolist() == gen.token_ids
        positions = torch.arange(p, p + n) - shift
        loc, traj = model.read_heads(states[positions])
        assert torch.allclose(traj, gen.trajectories, atol=1e-4) and torch.allclose(loc, gen.locations, atol=1e-4)
    finally:
        model.config.head_shift = 0


def test_generate_batched_left_padding_matches_single(world):
    model, tok, _ = world
    videos = [torch.randn(T, D), torch.randn(1, D)]
    prompts = [encode_prompt(tok, TEMPLATES["pite"], model.video_token_id, "describe the video", T),
               encode_prompt(tok, TEMPLATES["pite"], model.video_token_id, "what is in this image?", 1)]
    singles = [model.generate(p, video_features=[v], max_new_tokens=4)[0] for p, v in zip(prompts, videos)]
    length = max(len(p) for p in prompts)
    ids = torch.full((2, length), tok.pad_token_id)
    mask = torch.zeros((2, length), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):], mask[i, length - len(p):] = p, 1
    batched = model.generate(ids, attention_mask=mask, video_features=videos, max_new_tokens=4)
    for one, many in zip(singles, batched):
        assert one.token_ids == many.token_ids
        assert torch.allclose(one.trajectories, many.trajectories, atol=1e-4)
    with pytest.raises(ValueError, match="left padding"):
        model.generate(ids.flip(1), attention_mask=mask.flip(1), video_features=videos)


def test_generate_stops_at_the_stop_token(world):
    model, tok, _ = world
    prompt = encode_prompt(tok, TEMPLATES["pite"], model.video_token_id, "describe the video", T)
    (free,) = model.generate(prompt, video_features=torch.zeros(T, D), max_new_tokens=5, stop_token_ids=[])
    assert len(free.token_ids) == 5  # no stop token: runs to max_new_tokens
    stop = free.token_ids[2]
    (cut,) = model.generate(prompt, video_features=torch.zeros(T, D), max_new_tokens=5, stop_token_ids=[stop])
    first = free.token_ids.index(stop)
    assert cut.token_ids == free.token_ids[:first] and cut.trajectories.shape[0] == first


def test_the_kv_cache_is_handed_back_under_the_name_this_transformers_uses():
    """transformers 5.2x names the cache `cache`; earlier 5.x releases (5.17) `past_key_values`, in and out."""
    from dataclasses import dataclass

    from model.generate import cache_of

    @dataclass
    class Old:  # an earlier 5.x output
        past_key_values: object

    @dataclass
    class New:
        cache: object

    assert cache_of(Old("kv")) == {"past_key_values": "kv"} and cache_of(New("kv")) == {"cache": "kv"}

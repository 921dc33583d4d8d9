"""The colour-slot adapter: keypoints from pixels, S tokens per frame spliced LLaVA-style, padding invariance,
generation and checkpoints with the expanded sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotate.errors import ConfigError
from model.adapters import ColourSlotAdapter, build_adapter
from model.batch import collate
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import LabelConfig, LoraSettings, PiteConfig
from model.conversation import TEMPLATES
from model.factory import TinyLlamaSettings, build_tiny
from model.labels import build_examples, encode_prompt

T, K, D, S = 5, 3, 768, 4
CAPTIONS = ["the red ball and the blue cube", "a green box moves left"]
TINY = TinyLlamaSettings(vocab_size=300, rope_theta=1e6)


def _frame(square_at=None, colour=(1.0, 0.0, 0.0), background=(0.5, 0.5, 0.5)):
    img = np.empty((16, 16, 3), np.float32)
    img[:] = background
    if square_at is not None:
        y, x = square_at
        img[y:y + 3, x:x + 3] = colour
    return torch.from_numpy(img.reshape(-1))


def test_a_slot_finds_its_colour_where_it_is():
    adapter = ColourSlotAdapter(D, 32, slots=8)
    red = [i for i, p in enumerate(adapter.prototypes.tolist()) if p == [1.0, 0.0, 0.0]][0]
    frames = torch.stack([_frame((2, 2)), _frame((11, 12)), _frame(None)])
    tokens = adapter(frames)
    assert tokens.shape == (3, 8, 32)
    # the keypoints themselves (the soft-argmax), recomputed as forward does
    pixels = frames.view(3, 256, 3)
    logits = -(pixels[:, :, None] - adapter.prototypes[None, None]).pow(2).sum(-1) / torch.exp(adapter.log_width) ** 2
    xy = torch.einsum("nps,pc->nsc", torch.softmax(logits, 1), adapter.grid)
    centre = lambda y, x: torch.tensor([(x + 1.5) / 16 * 2 - 1, (y + 1.5) / 16 * 2 - 1])  # noqa: E731
    assert torch.allclose(xy[0, red], centre(2, 2), atol=0.02)
    assert torch.allclose(xy[1, red], centre(11, 12), atol=0.02)
    mass = torch.logsumexp(logits, 1)[:, red]
    assert mass[0] > mass[2] + 5  # a red square holds far more "red" than a grey frame
    # the time terms start at zero: a clip's frames and a lone image give the same tokens at first
    assert torch.allclose(adapter(frames, torch.tensor([0.0, 0.5, 1.0])), tokens)


def test_the_clock_tells_frames_apart_by_time_only_in_clips():
    adapter = ColourSlotAdapter(D, 32, slots=4)
    with torch.no_grad():
        adapter.clock.weight.normal_()
    same = torch.stack([_frame((5, 5))] * 3)
    timed = adapter(same, torch.tensor([0.0, 0.5, 1.0]))
    assert not torch.allclose(timed[0], timed[1]) and not torch.allclose(timed[1], timed[2])
    # the same offset for every slot of a frame
    assert torch.allclose(timed[1] - timed[0], (timed[1] - timed[0])[:1].expand(4, 32), atol=1e-5)
    # a lone image (NaN time) gets none
    assert torch.allclose(adapter(same[:1], torch.tensor([float("nan")])), adapter(same[:1]))


def test_bad_adapter_settings_are_config_errors():
    with pytest.raises(ConfigError, match="square RGB thumbnail"):
        build_adapter("colour_slots", 512, 32)
    with pytest.raises(ConfigError, match="unknown"):
        build_adapter("qformer", 768, 32)
    with pytest.raises(ConfigError, match="model.adapter"):
        PiteConfig(adapter="qformer")


def _sample(caption, phrases, seed):
    rng = np.random.default_rng(seed)
    spans = [(caption.index(p), caption.index(p) + len(p)) for p in phrases]
    vis = rng.random((len(spans), K, T)) > 0.3
    vis[:, 0, :2] = True
    return {
        "meta": {"video_id": f"v{seed}", "caption": caption, "duration": 5.0,
                 "objects": [{"phrase": caption[s:e], "char_span": [s, e], "frame": 1} for s, e in spans]},
        "traj": rng.random((len(spans), K, T, 2)).astype(np.float16),
        "vis": vis,
        "feat": rng.random((T, D)).astype(np.float16),
    }


@pytest.fixture(scope="module", params=[None, "hidden", "tokens"],
                ids=["projectors", "readout_of_hidden_states", "readout_of_adapter_tokens"])
def world(request):
    config = PiteConfig(n_points=K, n_frames=T, adapter="colour_slots", adapter_slots=S, head_shift=1,
                        lora=LoraSettings(r=4, alpha=8, dropout=0.0), frame_readout=request.param is not None,
                        frame_readout_source=request.param or "hidden")
    model, tok = build_tiny(CAPTIONS * 2, config, TINY)
    with torch.no_grad():  # make the motion term matter in these tests
        model.vision_adapter.motion.weight.normal_(0, 0.5)
        model.vision_adapter.clock.weight.normal_(0, 0.5)
    examples = []
    for stage, (caption, phrases) in zip((2, 2, 1), [(CAPTIONS[0], ["the red ball", "the blue cube"]),
                                                      (CAPTIONS[1], ["a green box"]),
                                                      (CAPTIONS[0], ["the red ball", "the blue cube"])]):
        exs, _ = build_examples(_sample(caption, phrases, stage), tok, TEMPLATES["pite"], model.video_token_id,
                                LabelConfig(stage=stage))
        examples += exs
    return model, tok, examples


def test_each_frame_becomes_its_slots_and_the_text_keeps_its_order(world):
    model, tok, examples = world
    batch = collate(examples, tok.pad_token_id, "right")
    embeds, mask, starts = model.embed(batch["input_ids"], batch["video_features"], batch["attention_mask"])
    n_video = (batch["input_ids"] == model.video_token_id).sum(1)
    assert mask.sum(1).tolist() == (batch["attention_mask"].sum(1) + n_video * (S - 1)).tolist()
    table = model.llm.get_input_embeddings()
    for row in range(len(examples)):
        ids = batch["input_ids"][row]
        text = (ids != model.video_token_id) & batch["attention_mask"][row].bool()
        assert torch.equal(embeds[row, starts[row, text]], table(ids[text]))
        first = starts[row, ids == model.video_token_id][0]
        frames = batch["video_features"][row]
        times = torch.arange(len(frames)) / (len(frames) - 1) if len(frames) > 1 else torch.tensor([float("nan")])
        expected = model.vision_adapter(frames.float(), times).reshape(-1, embeds.shape[-1])
        assert torch.allclose(embeds[row, first:first + len(frames) * S], expected, atol=1e-6)


def test_left_and_right_padding_give_the_same_losses_and_sums(world):
    model, tok, examples = world
    model.eval()
    with torch.no_grad():
        right = model(**collate(examples, tok.pad_token_id, "right"))
        left = model(**collate(examples, tok.pad_token_id, "left"))
        alone = [model(**collate([ex], tok.pad_token_id)) for ex in examples]
    for name in ("loss", "lm_loss", "loc_loss", "traj_loss"):
        assert abs(getattr(right, name).item() - getattr(left, name).item()) < 1e-5, name
    assert torch.allclose(right.traj_pred, left.traj_pred, atol=1e-5)
    for key in ("lm", "loc", "traj"):
        assert torch.isclose(right.sums[key], sum(o.sums[key] for o in alone), rtol=1e-5), key
        assert right.counts[key] == sum(o.counts[key] for o in alone)
    assert right.loc_loss > 0 and right.traj_loss > 0


def test_backward_reaches_the_adapter(world):
    model, tok, examples = world
    model.train()
    model.zero_grad()
    model(**collate(examples, tok.pad_token_id)).loss.backward()
    grads = {n: p.grad for n, p in model.vision_adapter.named_parameters()}
    if model.frame_readout is not None:
        grads.update({f"frame_readout.{n}": p.grad for n, p in model.frame_readout.named_parameters()})
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), sorted(grads)


def test_generate_matches_a_full_forward_and_batches_with_left_padding(world):
    model, tok, _ = world
    model.eval()
    video = torch.rand(T, D)
    prompt = encode_prompt(tok, TEMPLATES["pite"], model.video_token_id, "describe the video", T)
    (gen,) = model.generate(prompt, video_features=video, max_new_tokens=5, stop_token_ids=[])
    ids = torch.cat([prompt, torch.tensor(gen.token_ids)])[None]
    with torch.no_grad():
        embeds, mask, starts = model.embed(ids, video[None])
        out = model.llm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
        frames = model.frame_states(model.readout_source(out.hidden_states[-1], embeds), ids, starts)
    p = len(prompt) + T * (S - 1)  # the prompt's length once expanded
    n = len(gen.token_ids)
    assert out.logits[0, p - 1: p + n - 1].argmax(-1).tolist() == gen.token_ids
    with torch.no_grad():  # head_shift 1
        _, traj = model.read_heads(out.hidden_states[-1][0, torch.arange(p, p + n) - 1], torch.zeros(n, dtype=torch.long),
                                   frames)
    assert torch.allclose(traj, gen.trajectories, atol=1e-4)

    image = torch.rand(1, D)
    short = encode_prompt(tok, TEMPLATES["pite"], model.video_token_id, "what is in this image?", 1)
    singles = [model.generate(prompt, video_features=[video], max_new_tokens=3)[0],
               model.generate(short, video_features=[image], max_new_tokens=3)[0]]
    length = max(len(prompt), len(short))
    ids = torch.full((2, length), tok.pad_token_id)
    mask = torch.zeros((2, length), dtype=torch.long)
    for i, q in enumerate([prompt, short]):
        ids[i, length - len(q):], mask[i, length - len(q):] = q, 1
    batched = model.generate(ids, attention_mask=mask, video_features=[video, image], max_new_tokens=3)
    for one, many in zip(singles, batched):
        assert one.token_ids == many.token_ids
        assert torch.allclose(one.trajectories, many.trajectories, atol=1e-4)


def test_checkpoint_round_trip_keeps_the_adapter(world, tmp_path):
    model, tok, examples = world
    model.eval()
    batch = collate(examples, tok.pad_token_id)
    with torch.no_grad():
        before = model(**batch).traj_pred
    save_checkpoint(model, tok, tmp_path / "ck", TEMPLATES["pite"])
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    assert isinstance(loaded.vision_adapter, ColourSlotAdapter) and loaded.tokens_per_frame == S
    for llm in (model.llm, loaded.llm):  # the tiny LLaMA's rotary base travels with it
        rope = getattr(llm.config, "rope_parameters", None) or {"rope_theta": llm.config.rope_theta}
        assert rope["rope_theta"] == 1e6
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).traj_pred, before, atol=1e-6)


# ---- the frame readout ------------------------------------------------------------------------------------------


def test_frame_readout_points_at_the_matching_token_of_each_frame():
    from model.readout import FrameReadout

    hidden, n, slots = 6, 4, 3
    readout = FrameReadout(hidden, dim=hidden)
    with torch.no_grad():  # identity query/key; value = the token's dims 3:5 (its "position")
        for lin in (readout.query, readout.key):
            lin.weight.copy_(torch.eye(hidden) * 8.0)
            lin.bias.zero_()
        readout.value.weight.zero_()
        readout.value.weight[0, 3] = readout.value.weight[1, 4] = 1.0
        readout.value.bias.zero_()
    frames = torch.zeros(2, n, slots, hidden)
    frames[:, :, :, :3] = torch.eye(slots)  # token s of every frame has identity one-hot(s)
    frames[:, :, :, 3:5] = torch.randn(2, n, slots, 2)  # and its own position per frame
    queries = torch.zeros(3, hidden)
    queries[0, 1] = queries[1, 2] = queries[2, 0] = 1.0  # ask for slot 1 (row 0), slot 2 (row 0), slot 0 (row 1)
    rows = torch.tensor([0, 0, 1])
    out = readout(queries, rows, frames)
    assert out.shape == (3, n, 2)
    for m, (row, slot) in enumerate([(0, 1), (0, 2), (1, 0)]):
        assert torch.allclose(out[m], frames[row, :, slot, 3:5], atol=1e-3), m


def test_to_frames_resamples_other_clip_lengths():
    from model.readout import to_frames

    per_frame = torch.zeros(3, 4, 2)
    per_frame[0, :, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # 4 frames, a ramp
    per_frame[1, :2, 0] = torch.tensor([0.0, 1.0])  # 2 frames
    per_frame[2, :1] = torch.tensor([0.5, -0.5])  # 1 frame: held
    out = to_frames(per_frame, torch.tensor([4, 2, 1]), 7)
    assert torch.allclose(out[0, :, 0], torch.linspace(0, 3, 7))
    assert torch.allclose(out[1, :, 0], torch.linspace(0, 1, 7))
    assert torch.allclose(out[2], torch.tensor([0.5, -0.5]).expand(7, 2))
    same = torch.randn(2, 7, 2)
    assert to_frames(same, torch.tensor([7, 7]), 7) is same


def test_frame_states_are_the_visual_tokens_in_either_padding(world):
    model, tok, examples = world
    if model.frame_readout is None:
        assert model.frame_states(torch.zeros(1, 3, 8), torch.zeros(1, 3, dtype=torch.long), None) is None
        return
    model.eval()
    for side in ("right", "left"):
        batch = collate(examples, tok.pad_token_id, side)
        with torch.no_grad():
            embeds, mask, starts = model.embed(batch["input_ids"], batch["video_features"], batch["attention_mask"])
            states, n = model.frame_states(embeds, batch["input_ids"], starts)  # embeddings stand in for states
        assert n.tolist() == [len(v) for v in batch["video_features"]]
        for row, video in enumerate(batch["video_features"]):
            frames = video.float()
            times = torch.arange(len(frames)) / (len(frames) - 1) if len(frames) > 1 else torch.tensor([float("nan")])
            assert torch.allclose(states[row, : len(frames)], model.vision_adapter(frames, times), atol=1e-6), side


def test_frame_readout_needs_several_tokens_per_frame():
    config = PiteConfig(n_points=K, n_frames=T, frame_readout=True)
    with pytest.raises(ConfigError, match="frame_readout"):
        build_tiny(CAPTIONS, config, TINY)


def test_a_checkpoint_without_its_frame_readout_is_refused(world, tmp_path):
    from safetensors.torch import load_file, save_file

    model, tok, _ = world
    save_checkpoint(model, tok, tmp_path / "ck", TEMPLATES["pite"])
    heads = load_file(str(tmp_path / "ck" / "heads.safetensors"))
    if model.frame_readout is None:
        assert not any(k.startswith("frame_readout.") for k in heads)
        return
    save_file({k: v for k, v in heads.items() if not k.startswith("frame_readout.")},
              str(tmp_path / "ck" / "heads.safetensors"))
    with pytest.raises(ConfigError, match="missing.*frame_readout"):
        load_checkpoint(tmp_path / "ck")

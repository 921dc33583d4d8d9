"""Loading the PiTe release's layout (model.release) with a tiny model.

The fixture is written the way the release's files are, independently of our loader and saver: a HF base dir,
three stage dirs each a PEFT LoRA adapter over a model whose adapter and heads sit inside the LLaMA body under the
release's names (`model.vision_adapter`, `model.localization_projector`, `model.trajectory_projector`), with LoRA
on every Linear but lm_head (the release's find_all_linear_names), saved by PEFT as adapter_model.bin; plus
`non_lora_trainables.bin` and `vision_adapter.bin` written with torch.save under the release's key names.
The expected merged weights are computed by hand: W = (non-LoRA W or the previous W) + scale * B @ A per stage.
"""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from annotate.errors import ConfigError
from model.factory import TinyLlamaSettings, tiny_llama
from model.labels import encode_prompt
from model.pite import position_ids_from_mask
from model.release import ReleasePaths, load_release, normalise_keys
from model.tokenizer import train_tokenizer

TEXTS = ["a red ball rolls past a blue box", "describe the video", "From 10 to 20."] * 4
SETTINGS = TinyLlamaSettings(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                             vocab_size=300)
R, ALPHA = 4, 8


def release_shaped(base_dir):
    """The release's PiTeLlamaForCausalLM, mirrored: LLaMA + three Linears inside `model` (the LLaMA body)."""
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(base_dir)
    h = llm.config.hidden_size
    llm.model.vision_adapter = nn.Linear(768, h)
    llm.model.localization_projector = nn.Linear(h, 2)
    llm.model.trajectory_projector = nn.Linear(h, 3 * 100 * 2)
    return llm


def linear_names(model):
    """The release's find_all_linear_names: last name part of each nn.Linear but lm_head."""
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names - {"lm_head"})


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    tok = train_tokenizer(TEXTS, vocab_size=300)
    base = root / "vicuna-7b-v1.5"
    tiny_llama(tok, SETTINGS, seed=3).save_pretrained(base)
    tok.save_pretrained(base)

    g = torch.Generator().manual_seed(0)
    expected = {}  # parameter name (release model) -> tensor after the release's loading procedure
    reference = release_shaped(base)
    for name, p in reference.named_parameters():
        expected[name] = p.detach().clone()
    # vision_adapter.bin (in stage 2: the release prefers it over stage 1's)
    va = {"weight": torch.randn(32, 768, generator=g) * 0.05, "bias": torch.randn(32, generator=g) * 0.05}
    expected["model.vision_adapter.weight"], expected["model.vision_adapter.bias"] = va["weight"], va["bias"]

    stages = []
    for k in (1, 2, 3):
        stage = root / f"pite-vicuna-7b-v1.5-stage{k}"
        model = release_shaped(base)
        targets = linear_names(model)
        assert {"vision_adapter", "localization_projector", "trajectory_projector", "q_proj"} <= set(targets)
        peft_model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets,
                                                      task_type="CAUSAL_LM"))
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        peft_model.save_pretrained(stage, safe_serialization=False)
        assert (stage / "adapter_model.bin").is_file()
        # non_lora_trainables.bin, with every key prefix the release writes: stage 1 saved from the PEFT-wrapped
        # model (`base_model.model.model.<head>`, and `base_model.model.lm_head`, which load_lora strips to
        # `lm_head` because other keys start with `model.model.`); stage 2 with PEFT's `.base_layer.` of a
        # LoRA-wrapped Linear; stage 3 saved from the bare model (`model.<head>`, nothing stripped).
        non_lora = {}
        for head, out in (("localization_projector", 2), ("trajectory_projector", 600)):
            w, b = torch.randn(out, 32, generator=g) * 0.05, torch.randn(out, generator=g) * 0.05
            prefix = "model." if k == 3 else "base_model.model.model."
            mid = ".base_layer" if k == 2 else ""
            non_lora[f"{prefix}{head}{mid}.weight"] = w
            non_lora[f"{prefix}{head}{mid}.bias"] = b
            expected[f"model.{head}.weight"], expected[f"model.{head}.bias"] = w, b
        if k == 1:
            head = expected["lm_head.weight"] + torch.randn(expected["lm_head.weight"].shape, generator=g) * 0.01
            non_lora["base_model.model.lm_head.weight"] = expected["lm_head.weight"] = head
        torch.save(non_lora, stage / "non_lora_trainables.bin")
        if k == 2:
            torch.save({"model.vision_adapter.weight": va["weight"], "model.vision_adapter.bias": va["bias"]},
                       stage / "vision_adapter.bin")
        if k == 1:  # a stale adapter in stage 1 that must NOT be used
            torch.save({"model.vision_adapter.weight": torch.zeros(32, 768),
                        "model.vision_adapter.bias": torch.zeros(32)}, stage / "vision_adapter.bin")
        # This stage's merge: W += (alpha / r) * B @ A on every target.
        lora = {n: p.detach() for n, p in peft_model.named_parameters() if "lora_" in n}
        for n in list(expected):
            module, param = n.rsplit(".", 1)
            a = lora.get(f"base_model.model.{module}.lora_A.default.weight")
            if a is not None and param == "weight":
                b = lora[f"base_model.model.{module}.lora_B.default.weight"]
                expected[n] = expected[n] + (ALPHA / R) * b @ a
        stages.append(stage)
    paths = ReleasePaths(model_base=str(base), stage1=str(stages[0]), stage2=str(stages[1]), stage3=str(stages[2]))
    return paths, expected


def test_release_adapter_config_targets_the_adapter_and_heads(release):
    paths, _ = release
    with open(paths.stage3 + "/adapter_config.json") as f:
        config = json.load(f)
    assert {"vision_adapter", "localization_projector", "trajectory_projector"} <= set(config["target_modules"])
    assert "lm_head" not in config["target_modules"]


def test_load_release_merges_stages_in_order(release):
    paths, expected = release
    model, tok, template, report = load_release(paths)
    assert report.heads_loaded and report.vision_adapter.endswith("stage2/vision_adapter.bin")
    assert model.config.head_shift == 1 and template.video_prompt == "<video>\n{query}"
    assert not model.has_lora
    assert not hasattr(model.llm.model, "vision_adapter"), "the release modules moved out of the LLaMA body"
    llm = dict(model.llm.named_parameters())
    for name, want in expected.items():
        module = name.split(".")[1]
        if module in ("vision_adapter", "localization_projector", "trajectory_projector"):
            got = getattr(model, module).state_dict()[name.rsplit(".", 1)[1]]
        else:
            got = llm[name]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_load_keeps_heads_in_fp32_and_merges_without_bf16_deltas(release):
    """The base in bf16 (as on a GPU): the adapter and heads are loaded and LoRA-merged in fp32 (exact), and the
    LLM's weights stay within a few bf16 roundings of the fp32 result (one for the base, one per stage)."""
    paths, expected = release
    model, _, _, _ = load_release(paths, dtype="bfloat16")
    for module in ("vision_adapter", "localization_projector", "trajectory_projector"):
        for part in ("weight", "bias"):
            got = getattr(model, module).state_dict()[part]
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, expected[f"model.{module}.{part}"], atol=1e-6, rtol=1e-5)
    llm = dict(model.llm.named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    assert llm[name].dtype == torch.bfloat16
    want = expected[name]
    scale = float(want.abs().max())
    torch.testing.assert_close(llm[name].float(), want, atol=4 * 2 ** -8 * scale, rtol=0)


def test_released_model_generates_with_head_shift_one(release):
    paths, _ = release
    model, tok, template, _ = load_release(paths)
    feats = torch.randn(100, 768, generator=torch.Generator().manual_seed(1))
    ids = encode_prompt(tok, template, model.video_token_id, "describe the video", n_video=100)
    text = tok.decode(ids)
    assert text.count("<video>") == 100 and "USER: " + "<video>" * 100 + "\ndescribe the video ASSISTANT:" in text
    [gen] = model.generate(ids, video_features=feats, max_new_tokens=6, tokenizer=tok, stop_token_ids=[-1])
    assert len(gen.token_ids) == 6 and gen.trajectories.shape == (6, 3, 100, 2)
    # head_shift 1: token j's trajectory is the head on the hidden state at the position before it.
    full = torch.cat([ids, torch.tensor(gen.token_ids)])[None]
    out = model.llm(inputs_embeds=model.embed(full, feats[None])[0], attention_mask=torch.ones_like(full),
                    position_ids=position_ids_from_mask(torch.ones_like(full)), output_hidden_states=True)
    hidden = out.hidden_states[-1][0, len(ids) - 1:len(ids) + 5]
    _, traj = model.read_heads(hidden)
    torch.testing.assert_close(gen.trajectories, traj, atol=1e-4, rtol=1e-4)


def test_key_normalisation_follows_the_release():
    """load_lora: strip `base_model.` from each key; then, if ANY key starts with `model.model.`, strip `model.`
    from every key that starts with it (so `base_model.model.lm_head.weight` becomes `lm_head.weight`)."""
    keys = ["base_model.model.model.trajectory_projector.weight", "base_model.model.lm_head.weight",
            "model.model.layers.0.mlp.up_proj.weight", "model.localization_projector.base_layer.bias",
            "lm_head.weight"]
    assert normalise_keys(keys) == {
        "base_model.model.model.trajectory_projector.weight": "model.trajectory_projector.weight",
        "base_model.model.lm_head.weight": "lm_head.weight",
        "model.model.layers.0.mlp.up_proj.weight": "model.layers.0.mlp.up_proj.weight",
        "model.localization_projector.base_layer.bias": "localization_projector.bias",
        "lm_head.weight": "lm_head.weight"}
    # no key under model.model.: nothing more is stripped
    assert normalise_keys(["model.trajectory_projector.weight", "base_model.lm_head.weight"]) == {
        "model.trajectory_projector.weight": "model.trajectory_projector.weight",
        "base_model.lm_head.weight": "lm_head.weight"}


def test_bad_release_files_are_config_errors(release, tmp_path):
    paths, _ = release
    with pytest.raises(ConfigError, match="stage1 is required"):
        load_release(ReleasePaths(model_base=paths.model_base))
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        load_release(ReleasePaths(model_base=paths.model_base, stage1=str(tmp_path)))
    # A non_lora key that names nothing of the model (e.g. another architecture) is an error, not skipped.
    import shutil

    stage = tmp_path / "stage1"
    shutil.copytree(paths.stage1, stage)
    torch.save({"base_model.model.model.mm_projector.weight": torch.zeros(2, 2)}, stage / "non_lora_trainables.bin")
    with pytest.raises(ConfigError, match="mm_projector.*names no parameter"):
        load_release(ReleasePaths(model_base=paths.model_base, stage1=str(stage)))
    # A pickle that is not plain tensors is refused by weights_only loading.
    (stage / "non_lora_trainables.bin").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="not a readable tensor file"):
        load_release(ReleasePaths(model_base=paths.model_base, stage1=str(stage)))

r"""The PiTe network: frame features -> vision adapter -> spliced into an LLM's input -> LM + localisation/trajectory heads.

    features (n, 768) --vision_adapter--> n x S embeddings at the n `<video>` positions of the conversation
                                          (S = 1 for the linear adapter; a position becomes S, as LLaVA expands
                                          its image token into patches)
    LLM (any AutoModelForCausalLM; LoRA via peft) --> logits (LM loss on answer tokens)
                                                  \-> last hidden states --localization_projector--> (x, y)
                                                                         \-trajectory_projector---> (K, T, 2)

Two aids for the tiny demo model, opt-in, each with its glue in its own module: `frame_readout`
(model/readout.py) adds a pointer over each frame's visual tokens to both heads (`read_heads`), and `time_pointer`
(model/time_pointer.py) adds one over the frames to the next-token logits of frame-number digits (`_lm_sum`).

A phrase's heads are read at its last token (`head_shift` 0) or at the position before (1, the release's).
Heads and their L1 run in fp32, masked to supervised tokens x visible points (see model/losses.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from annotate.errors import ConfigError
from model.adapters import build_adapter, tokens_per_frame
from model.config import LoraSettings, PiteConfig
from model.encoding import IGNORE_INDEX
from model.losses import lm_sum, masked_l1_sum, normalise
from model.generate import Generation, generate
from model.readout import FrameReadout, add_readout, visual_token_states
from model.sequence import expand_video, follow, frame_times, position_ids_from_mask, stack_frames
from model.time_pointer import TimePointer, add_pointer_term, pointer_context, pointer_keys


def _moved(labels, head_pos, head_batch, starts: torch.Tensor, shape) -> tuple:
    """Labels and head positions where their tokens went when the video positions were expanded."""
    if labels is not None:
        labels = follow(labels, starts, shape, IGNORE_INDEX)
    if head_pos is not None and head_pos.numel():
        head_pos = starts[head_batch, head_pos]
    return labels, head_pos


@dataclass
class PiteOutput:
    loss: torch.Tensor  # lambda_lm * lm + lambda_loc * loc + lambda_traj * traj (what to backpropagate)
    lm_loss: torch.Tensor
    loc_loss: torch.Tensor
    traj_loss: torch.Tensor
    sums: dict[str, torch.Tensor]  # un-normalised local sums ("lm", "loc", "traj"), detached
    counts: dict[str, torch.Tensor]  # local counts (tokens, supervised phrases, visible points)
    logits: Optional[torch.Tensor] = None
    loc_pred: Optional[torch.Tensor] = None  # (M, 2) at the supervised tokens
    traj_pred: Optional[torch.Tensor] = None  # (M, K, T, 2)


class PiteModel(nn.Module):
    def __init__(self, llm: nn.Module, config: PiteConfig, video_token_id: int):
        super().__init__()
        self.config = config
        self.video_token_id = int(video_token_id)
        self.llm = llm
        hidden = llm.config.get_text_config().hidden_size
        device = llm.get_input_embeddings().weight.device
        k, t = config.n_points, config.n_frames
        # Adapter and heads stay fp32 (autocast runs the adapter in bf16 on GPU; heads run with autocast off).
        self.vision_adapter = build_adapter(config.adapter, config.feat_dim, hidden, slots=config.adapter_slots,
                                            basis=config.adapter_basis, device=device)
        self.localization_projector = nn.Linear(hidden, 2, device=device)
        self.trajectory_projector = nn.Linear(hidden, k * t * 2, device=device)
        self.init_trajectory_from_localization()
        # Optional pointer term of both heads over each frame's visual tokens (model/readout.py says why).
        self.frame_readout = None
        if config.frame_readout:
            if self.tokens_per_frame == 1:
                raise ConfigError("model.frame_readout needs an adapter with several tokens per frame (colour_slots): "
                                  "with one token per frame it cannot tell the objects of a frame apart")
            self.frame_readout = FrameReadout(hidden, config.frame_readout_dim, device=device)
        self.time_pointer = None
        if config.time_pointer:
            if config.time_token_ids is None:
                raise ConfigError("model.time_pointer: no time_token_ids (build the model through model.factory, "
                                  "which reads them off the tokenizer)")
            vocab = llm.get_input_embeddings().num_embeddings if config.time_pointer_reads == "words" else 0
            self.time_pointer = TimePointer(hidden, self.tokens_per_frame, config.time_token_ids,
                                            dim=config.time_pointer_dim, kernel=config.time_pointer_kernel,
                                            vocab=vocab, device=device)
        # Where the base LLM came from (a local dir) and the LoRA adapters already merged into it, in order:
        # what a checkpoint needs to rebuild these weights (model/checkpoint.py).
        self.base_source: Optional[str] = None
        self.merged_adapters: list[tuple[dict, dict[str, torch.Tensor]]] = []

    # ---- set-up -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def init_trajectory_from_localization(self) -> None:
        """Every (k, t) output starts as the localisation head (the release repeats its weight and bias K*T times)."""
        reps = self.config.n_points * self.config.n_frames
        self.trajectory_projector.weight.copy_(self.localization_projector.weight.repeat(reps, 1))
        self.trajectory_projector.bias.copy_(self.localization_projector.bias.repeat(reps))

    @property
    def has_lora(self) -> bool:
        return hasattr(self.llm, "peft_config")

    def apply_lora(self, settings: Optional[LoraSettings] = None) -> None:
        """Wrap the LLM with a fresh LoRA adapter (peft); its base weights freeze, the adapter trains."""
        from peft import LoraConfig, get_peft_model

        s = settings or self.config.lora
        if self.has_lora:
            raise RuntimeError("the LLM already has a LoRA adapter: merge it first (model.checkpoint.merge_lora)")
        # "all-linear" is peft's "every Linear but the output layer", i.e. all but lm_head.
        targets = list(s.targets) if s.targets else "all-linear"
        lora = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=targets,
                          task_type="CAUSAL_LM")
        self.llm = get_peft_model(self.llm, lora)

    def set_lora_input_cast(self, enabled: bool) -> None:
        """PEFT casts each LoRA layer's input to the adapter's dtype (fp32 beside a bf16 base) before its matmuls.
        Under bf16 autocast those run in bf16 whatever the input, so the cast only costs a copy: turn it off."""
        for module in self.llm.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = enabled

    def base_llm(self) -> nn.Module:
        """The transformers model under any peft wrapper."""
        return self.llm.get_base_model() if self.has_lora else self.llm

    def set_trainable(self, adapter: bool = True, lora: bool = True, loc_head: bool = True, traj_head: bool = True,
                      llm: bool = False, time_pointer: Optional[bool] = None) -> None:
        """Choose what trains: the adapter, the LoRA weights, each head, or (rarely) the whole LLM; the time pointer
        trains with the LLM or LoRA unless `time_pointer` says otherwise."""
        for name, p in self.llm.named_parameters():
            p.requires_grad_(llm or (lora and "lora_" in name))
        self.vision_adapter.requires_grad_(adapter)
        self.localization_projector.requires_grad_(loc_head)
        self.trajectory_projector.requires_grad_(traj_head)
        if self.frame_readout is not None:  # a term of both heads: it trains with either
            self.frame_readout.requires_grad_(loc_head or traj_head)
        if self.time_pointer is not None:  # a term of the LM's logits: by default it trains with the LM
            self.time_pointer.requires_grad_(bool(llm or lora) if time_pointer is None else time_pointer)

    def enable_gradient_checkpointing(self) -> None:
        # Non-reentrant checkpointing works with frozen embeddings (no enable_input_require_grads needed).
        # transformers 5.2x renamed gradient_checkpointing_enable to activation_checkpointing_enable.
        llm, kwargs = self.base_llm(), {"use_reentrant": False}
        if hasattr(llm, "activation_checkpointing_enable"):
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    @property
    def device(self) -> torch.device:
        return self.localization_projector.weight.device

    @property
    def tokens_per_frame(self) -> int:
        return tokens_per_frame(self.vision_adapter)

    def extra_modules(self) -> list[str]:
        """What lives outside the LLM: the adapter, both heads, the frame readout and time pointer when there."""
        names = ["vision_adapter", "localization_projector", "trajectory_projector"]
        names += ["frame_readout"] if self.frame_readout is not None else []
        return names + (["time_pointer"] if self.time_pointer is not None else [])

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name in self.extra_modules() for k, v in getattr(self, name).state_dict().items()}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter that trains now, by its full name (for a trainer's resumable checkpoints)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    # ---- forward ------------------------------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, video_features=None,
              attention_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Input embeddings with the adapted frames spliced in: (embeds (B, L', H), attention mask (B, L'), starts).

        Each video position holds one frame (row-major order). A one-token-per-frame adapter replaces it in place
        (L' = L, starts None). An adapter with S tokens per frame expands it to S positions: `starts` (B, L) maps
        every input position to its first new one. Rows stay right-aligned when all of them end in a real token
        (left padding, as `generate` needs), else left-aligned.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        is_video = input_ids == self.video_token_id
        # The placeholder id may lie outside the embedding table (Vicuna + an added token): never look it up.
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_video, 0))
        frames = stack_frames(video_features, is_video)
        if frames is None:
            return embeds, attention_mask, None
        ref = self.localization_projector.weight
        if self.tokens_per_frame == 1:
            adapted = self.vision_adapter(frames.to(ref.dtype)).to(embeds.dtype)
            return embeds.masked_scatter(is_video.unsqueeze(-1).expand_as(embeds), adapted), attention_mask, None
        adapted = self.vision_adapter(frames.to(ref.dtype), frame_times(is_video)).to(embeds.dtype)  # (N, S, H)
        return expand_video(embeds, attention_mask, is_video, adapted)

    def read_heads(self, hidden: torch.Tensor, rows: Optional[torch.Tensor] = None,
                   frames: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads on hidden states (M, H), in fp32 outside autocast: (M, 2) and (M, K, T, 2).

        With a frame readout, `rows` (M,) says each state's batch row and `frames` = `frame_states(...)` holds the
        rows' visual token states; rows without frames get the projectors alone."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = self.localization_projector.weight
            loc = self.localization_projector(hidden.to(w.dtype)).float()
            traj = self.trajectory_projector(hidden.to(w.dtype)).float()
            traj = traj.view(-1, self.config.n_points, self.config.n_frames, 2)
            if self.frame_readout is not None and frames is not None and rows is not None:
                loc, traj = add_readout(self.frame_readout, loc, traj, hidden.to(w.dtype), rows, frames,
                                        self.config.n_frames)
        return loc, traj

    def readout_source(self, hidden: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """What the frame readout points at: the LLM's last hidden states, or its input (the adapter's tokens)."""
        return embeds if self.config.frame_readout_source == "tokens" else hidden

    def frame_states(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                     starts: Optional[torch.Tensor]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """The visual tokens' states of each row for the frame readout (model/readout.py); None without one."""
        if self.frame_readout is None:
            return None
        return visual_token_states(hidden, input_ids, starts, self.video_token_id, self.tokens_per_frame)

    def time_keys(self, input_ids: torch.Tensor, video_features) -> Optional[list[Optional[torch.Tensor]]]:
        """The time pointer's keys of each row's clip (model/time_pointer.py); None without a time pointer."""
        return None if self.time_pointer is None else pointer_keys(self, input_ids, video_features)

    def _time_context(self, token_ids: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return pointer_context(self, token_ids, embeds, hidden)

    def with_time_pointer(self, logits: torch.Tensor, hidden: torch.Tensor, rows: torch.Tensor,
                          positions: torch.Tensor, keys: Optional[list],
                          context: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Next-token logits plus the time pointer's term (model/time_pointer.py); unchanged without keys."""
        return logits if keys is None else add_pointer_term(self, logits, hidden, rows, positions, keys, context)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        video_features=None,
        labels: Optional[torch.Tensor] = None,
        head_batch: Optional[torch.Tensor] = None,
        head_pos: Optional[torch.Tensor] = None,
        loc_target: Optional[torch.Tensor] = None,
        loc_mask: Optional[torch.Tensor] = None,
        traj_target: Optional[torch.Tensor] = None,
        traj_mask: Optional[torch.Tensor] = None,
        counts: Optional[dict] = None,
        logits_at_labels: bool = False,
    ) -> PiteOutput:
        """Losses of a padded batch (model.batch.collate builds these arguments).

        `video_features`: (B, n, D) or a list of B tensors (n_b, D) / None, n_b = the row's video positions.
        `counts`: optional global denominators {"lm", "loc", "traj"} (model.losses.target_counts summed over the
        accumulation micro-batches and all-reduced over ranks); without them each loss is a mean over this batch.
        Each loss is then local sum / global count; DDP averages gradients over ranks, so a DDP trainer scales
        the loss by the world size to get the gradient of the global mean.
        `logits_at_labels`: run the LM head only where a label follows (the loss reads nothing else; in stage 2
        most positions are frames or prompt), and return no logits. The same loss, less compute and memory.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds, attention_mask, starts = self.embed(input_ids, video_features, attention_mask)
        token_ids = follow(input_ids, starts, attention_mask.shape, self.video_token_id)
        if starts is not None:  # positions moved: labels and head positions follow their tokens
            labels, head_pos = _moved(labels, head_pos, head_batch, starts, attention_mask.shape)
        selective = logits_at_labels and labels is not None
        body = self.base_llm().get_decoder() if selective else self.llm
        out = body(inputs_embeds=embeds, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask),
                   output_hidden_states=not selective, use_cache=False, return_dict=True)
        hidden = out.last_hidden_state if selective else out.hidden_states[-1]
        counts, sums, local = counts or {}, {}, {}
        logits = None if selective else out.logits
        if labels is not None:
            logits, (sums["lm"], local["lm"]) = self._lm_sum(logits, labels, hidden, embeds, token_ids,
                                                              attention_mask, input_ids, video_features)
        else:
            sums["lm"], local["lm"] = self._nothing(hidden)

        loc_pred = traj_pred = None
        if head_pos is not None and head_pos.numel():
            index = self._head_index(head_pos, head_batch, attention_mask)
            frames = self.frame_states(self.readout_source(hidden, embeds), input_ids, starts)
            loc_pred, traj_pred = self.read_heads(hidden[head_batch, index], head_batch, frames)
        for name, pred, target, mask in (("loc", loc_pred, loc_target, loc_mask),
                                         ("traj", traj_pred, traj_target, traj_mask)):
            sums[name], local[name] = self._head_l1(name, pred, target, mask, hidden)

        lm, loc, traj = (normalise(sums[k], local[k], counts.get(k)) for k in ("lm", "loc", "traj"))
        c = self.config
        loss = c.lambda_lm * lm + c.lambda_loc * loc + c.lambda_traj * traj + self._ddp_anchor()
        return PiteOutput(loss=loss, lm_loss=lm, loc_loss=loc, traj_loss=traj,
                          sums={k: v.detach() for k, v in sums.items()}, counts=local,
                          logits=logits, loc_pred=loc_pred, traj_pred=traj_pred)

    def _head_l1(self, name: str, pred, target, mask, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed L1, count) of one head where it has a target, else zeros."""
        if pred is None or target is None or mask is None:
            return self._nothing(hidden)
        if target.shape != pred.shape:
            raise ValueError(f"{name}_target has shape {tuple(target.shape)}, the head gives "
                             f"{tuple(pred.shape)} (n_points/n_frames of the config)")
        return masked_l1_sum(pred, target, mask)

    @staticmethod
    def _nothing(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden.new_zeros((), dtype=torch.float32), torch.zeros((), dtype=torch.long, device=hidden.device)

    def _lm_sum(self, logits: Optional[torch.Tensor], labels: torch.Tensor, hidden: torch.Tensor,
                embeds: torch.Tensor, token_ids: torch.Tensor, attention_mask: torch.Tensor, input_ids: torch.Tensor,
                video_features) -> tuple[Optional[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(the logits returned, (summed next-token cross-entropy, labelled count)). `logits` None: the LM head
        runs on the labelled positions' states only. The time pointer adds its term where a label follows."""
        keys = self.time_keys(input_ids, video_features)
        b, i = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
        context = None
        if keys is not None:
            context = (self._time_context(token_ids, embeds, hidden),
                       attention_mask.bool() & (token_ids != self.video_token_id), token_ids)
        if logits is None:  # (M, V) at the M labelled positions, each predicting the label after it
            picked = self.base_llm().get_output_embeddings()(hidden[b, i])
            if keys is not None:
                picked = self.with_time_pointer(picked, hidden[b, i], b, i, keys, context)
            total = F.cross_entropy(picked.float(), labels[b, i + 1], reduction="sum")
            return None, (total, torch.tensor(b.numel(), device=hidden.device))
        if keys is not None:  # the pointer's term where a label follows (the only logits the loss reads)
            logits = logits.float().clone()
            logits[b, i] = self.with_time_pointer(logits[b, i], hidden[b, i], b, i, keys, context)
        return logits, lm_sum(logits, labels)

    def _head_index(self, head_pos: torch.Tensor, head_batch: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
        """Where each phrase is read: head_shift tokens before its last token (a real token of its row)."""
        index = head_pos - self.config.head_shift
        rows = torch.arange(head_pos.numel(), device=index.device)
        if (index < 0).any() or not attention_mask[head_batch, index.clamp(min=0)].bool().all():
            bad = rows[(index < 0) | ~attention_mask[head_batch, index.clamp(min=0)].bool()][0].item()
            raise ValueError(f"head {bad}: position {head_pos[bad].item()} - head_shift "
                             f"{self.config.head_shift} is not a real token of row {head_batch[bad].item()}")
        return index

    def _ddp_anchor(self) -> torch.Tensor:
        """0 x (trainable adapter/head weights): keeps every trainable parameter in the graph on batches without
        video or supervised phrases, so DDP/FSDP need no find_unused_parameters."""
        params = [p for name in self.extra_modules() for p in getattr(self, name).parameters() if p.requires_grad]
        if not params:
            return torch.zeros((), device=self.device)
        return sum(p.sum() for p in params) * 0.0

    # ---- generation ---------------------------------------------------------------------------------------------

    def generate(self, input_ids: torch.Tensor, **kwargs) -> list[Generation]:
        """Decoding with both heads read per generated token: model/generate.py's `generate`."""
        return generate(self, input_ids, **kwargs)

"""The joint, separate and cascade stages: a weighted sum of the consumers' own losses.

* joint: the tokenizer trains, and its straight-through codes feed the LLM, flow and reward model, so
  ``0.1 * llm + 1.0 * flow + 1.0 * reward`` all shape the tokenizer.
* separate: the tokenizer is frozen; the consumers train on its ids (no gradient can reach it), read once per
  utterance (:class:`~e2e_tts.objectives.token_cache.FrozenTokenCache`).
* cascade (the paper's baseline): the tokenizer is trained by the recognition loss alone
  (``llm: 0, flow: 0``), then the others train separately on its frozen ids.

The reward model's task heads learn from the labels the batch carries: the speaker, and the quality, a MOS binned
into the head's classes (e2e_tts.models.reward.mos_bins; tools/degrade_corpus.py labels clean and degraded speech);
a row without a label teaches its head nothing, and a reward model without a quality head ignores the labels.

Besides the losses, training may prefix rows, replace inputs by noise and guide the LLM's attention
(``stage.multitask``, :class:`~e2e_tts.stage.MultiTaskConfig`). With ``prompt_pairs``, some of the LLM's rows are
prefixed by a same-speaker utterance of the batch, as synthesis prefixes a prompt
(:mod:`e2e_tts.objectives.prompting`); ``llm_acc`` then counts those rows whole. In eval mode (validation), every
row with a partner is also scored behind it: ``llm_nll_prompted`` and ``llm_acc_prompted`` cover the row's own
tokens only, the layout synthesis asks for.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from e2e_tts.models.llm import IGNORE_INDEX, LLMOutput
from e2e_tts.models.reward import mos_bins
from e2e_tts.objectives.prompting import prefix_partners, same_speaker_partners
from e2e_tts.objectives.token_cache import FrozenTokenCache
from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem

CONSUMERS = ("llm", "flow", "reward")


class MultiTaskObjective(nn.Module):
    """``sum_k w_k * loss_k`` over the consumers with a non-zero weight, plus the quantizer's aux loss."""

    def __init__(self, system: TTSSystem, stage: StageConfig):
        super().__init__()
        self.system = system
        unknown = set(stage.loss_weights) - set(CONSUMERS)
        if unknown:
            raise ValueError(f"stage {stage.name!r}: unknown loss weight(s) {sorted(unknown)}; known: {CONSUMERS}")
        self.weights = {k: float(w) for k, w in stage.loss_weights.items() if w != 0}
        frozen_with_weight = [k for k in self.weights if k not in stage.trainable]
        if frozen_with_weight:
            raise ValueError(f"stage {stage.name!r}: loss weight on frozen module(s) {frozen_with_weight}")
        # A trainable module without a loss would get no gradient, which ZeRO's reduction does not allow.
        idle = [k for k in stage.trainable if k != "tokenizer" and k not in self.weights]
        if idle or not self.weights:
            raise ValueError(f"stage {stage.name!r}: trainable module(s) {idle or list(stage.trainable)} have no "
                             f"non-zero loss weight")
        self.config = stage.multitask
        if "llm" in self.weights and self.config.guide.weight > 0:
            system.llm.enable_guide(self.config.guide)
        self.train_tokenizer = "tokenizer" in stage.trainable
        self.frozen_tokens = None if self.train_tokenizer else FrozenTokenCache(system.tokenizer)
        self.step = 0

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        system = self.system
        codebook = system.codebook()
        # The joint stage passes differentiable codes; a frozen tokenizer passes plain ids.
        aux_loss = None
        if self.train_tokenizer:
            tokens = system.tokenizer(batch["mel"], batch["mel_mask"])
            speech, speech_ids, speech_mask, aux_loss = tokens.codes, tokens.ids, tokens.mask, tokens.aux_loss
        else:
            speech_ids, speech_mask = self.frozen_tokens(batch["mel"], batch["mel_mask"], batch["keys"])
            speech = speech_ids
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {}
        if "llm" in self.weights:
            llm_inputs = batch["text_ids"], batch["text_mask"], speech, speech_mask, speech_ids
            if self.training and self.config.prompt_pairs > 0:
                llm_inputs = prefix_partners(*llm_inputs, batch["speaker"], self.config.prompt_pairs)
            text_ids, text_mask, llm_speech, llm_speech_mask, llm_speech_ids = llm_inputs
            out = system.llm(text_ids, text_mask, llm_speech, llm_speech_mask, codebook, speech_ids=llm_speech_ids,
                             guide=self.config.guide, input_noise=self.config.llm_input_noise)
            losses["llm"] = system.llm.loss(out)
            metrics["llm_acc"] = system.llm.accuracy(out).item()
            metrics["llm_nll"] = losses["llm"].item()
            if out.guide_loss is not None:  # guided attention (training only): part of the LLM's loss
                metrics["llm_guide"] = out.guide_loss.item()
                losses["llm"] = losses["llm"] + self.config.guide.weight * out.guide_loss
            if not self.training:
                metrics.update(self.behind_prompt(batch["text_ids"], batch["text_mask"], speech_ids, speech_mask,
                                                  batch["speaker"], codebook))
        if "flow" in self.weights:
            terms = system.flow.loss_terms(batch["mel"], batch["mel_mask"], speech, speech_mask, codebook)
            losses["flow"] = system.flow.weighted_loss(terms)
            metrics.update({f"flow_{k}": v.item() for k, v in terms.items()})
        if "reward" in self.weights:
            labels = batch.get("quality")  # a batch built without the loader may carry no labels at all
            quality = (mos_bins(labels, system.reward.config.num_quality_classes, speech.device)
                       if labels is not None and "quality" in system.reward.task_heads else None)
            out = system.reward(speech, speech_mask, codebook, batch["text_ids"], batch["text_mask"],
                                speaker=system.speaker_ids(batch["speaker"], speech.device), quality=quality,
                                token_noise=self.config.reward_input_noise)
            losses["reward"] = out.loss
            metrics.update({f"reward_{k}": v.item() for k, v in out.losses.items()})
        total = sum(self.weights[k] * v for k, v in losses.items())
        if aux_loss is not None:
            total = total + aux_loss
        metrics.update({k: v.item() for k, v in losses.items()})
        metrics["loss"] = total.item()
        return total, metrics

    @torch.no_grad()
    def behind_prompt(self, text_ids: torch.Tensor, text_mask: torch.Tensor, speech_ids: torch.Tensor,
                      speech_mask: torch.Tensor, speakers: list[str], codebook: torch.Tensor) -> dict[str, float]:
        """Teacher-forced NLL and accuracy of each row's own tokens (and EOS) behind another utterance of its
        speaker, over the rows that have one in the batch; empty when none has.

        Args:
            text_ids, text_mask, speech_ids, speech_mask: ``(B, L)`` and ``(B, S)``; speakers: B names;
            codebook: ``(V, Dc)``.
        """
        partners = same_speaker_partners(speakers)
        rows = [b for b, partner in enumerate(partners) if partner is not None]
        if not rows:
            return {}
        texts = [ids[mask] for ids, mask in zip(text_ids, text_mask)]
        speech = [ids[mask] for ids, mask in zip(speech_ids, speech_mask)]
        out, prompt_lengths = self.system.llm.forward_after_prompts(
            [texts[partners[b]] for b in rows], [texts[b] for b in rows], [speech[partners[b]] for b in rows],
            [speech[b] for b in rows], codebook)
        positions = torch.arange(out.targets.shape[1], device=out.targets.device)[None, :]
        # The prompt's own targets are ignored, so the LLM's loss and accuracy cover the row's tokens only.
        own = LLMOutput(logits=out.logits, targets=out.targets.masked_fill(positions < prompt_lengths[:, None],
                                                                            IGNORE_INDEX))
        llm = self.system.llm
        return {"llm_nll_prompted": llm.loss(own).item(), "llm_acc_prompted": llm.accuracy(own).item()}

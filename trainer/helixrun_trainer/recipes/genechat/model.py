"""GeneChat's network, batched: frozen DNA encoder -> adapter -> LLM with LoRA.

    windows  [B, W, T] token ids of each gene's 512-nt windows (W padded, window_valid marks real ones)
    vectors  = mean over tokens of Encoder(windows)          [B, W, H]   frozen, no grad, in chunks
    gene     = Adapter(vectors)                               [B, W, D]   Linear(H -> D), frozen unless trained
    embeds   = LLM.embed(input_ids) with gene[b, slot] at the <gene> slots
    losses   = per sample: mean cross-entropy over its answer tokens              [B]

The reference runs batch 1; here each sample's windows occupy its own slots
and padding windows are never attended to, so any batch size gives the same
per-sample result.
"""

from __future__ import annotations

import torch
from torch import nn


class GeneChat(nn.Module):
    def __init__(self, encoder: nn.Module, llm: nn.Module, encoder_hidden: int, llm_hidden: int,
                 train_adapter: bool = False, encoder_chunk: int = 64):
        super().__init__()
        self.encoder = encoder
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.adapter = nn.Linear(encoder_hidden, llm_hidden)
        self.adapter.requires_grad_(train_adapter)
        self.llm = llm
        self.encoder_chunk = encoder_chunk

    def gradient_checkpointing_enable(self, **kwargs):
        kwargs.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
        self.llm.gradient_checkpointing_enable(**kwargs)
        if hasattr(self.llm, "enable_input_require_grads"):
            self.llm.enable_input_require_grads()

    @torch.no_grad()
    def window_vectors(self, windows: torch.Tensor, window_mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean-pooled encoder states per window -> [B, W, H] (zeros for padding windows)."""
        b, w, t = windows.shape
        flat_ids, flat_mask = windows[valid], window_mask[valid]
        self.encoder.eval()
        pooled = []
        for start in range(0, flat_ids.shape[0], self.encoder_chunk):
            ids, mask = flat_ids[start:start + self.encoder_chunk], flat_mask[start:start + self.encoder_chunk]
            hidden = self.encoder(input_ids=ids, attention_mask=mask)[0].float()
            m = mask.unsqueeze(-1).float()
            pooled.append((hidden * m).sum(1) / m.sum(1).clamp(min=1.0))
        hidden_size = pooled[0].shape[-1] if pooled else self.adapter.in_features
        out = torch.zeros((b, w, hidden_size), device=windows.device)
        if pooled:
            out[valid] = torch.cat(pooled)
        return out

    def embed(self, input_ids: torch.Tensor, gene_slot: torch.Tensor, windows, window_mask, window_valid):
        vectors = self.window_vectors(windows, window_mask, window_valid)
        gene = self.adapter(vectors.to(self.adapter.weight.dtype))  # [B, W, D]
        text = self.llm.get_input_embeddings()(input_ids)
        index = gene_slot.clamp(min=0).unsqueeze(-1).expand(-1, -1, gene.shape[-1])
        placed = torch.gather(gene, 1, index).to(text.dtype)
        return torch.where((gene_slot >= 0).unsqueeze(-1), placed, text)

    def forward(self, input_ids, attention_mask, gene_slot, labels, windows, window_mask, window_valid):
        """Each sample's loss, the mean over its answer tokens: the reference's batch-1 loss, per row."""
        embeds = self.embed(input_ids, gene_slot, windows, window_mask, window_valid)
        logits = self.llm(inputs_embeds=embeds, attention_mask=attention_mask).logits[:, :-1].float()
        targets = labels[:, 1:]
        nll = nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        counted = (targets != -100).sum(1)
        return nll.sum(1) / counted.clamp(min=1)

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask, prompt_slot, windows, window_mask, window_valid, **generation):
        """The LLM's generate on the prompt embeddings; `generation` goes to it as given."""
        embeds = self.embed(prompt_ids, prompt_slot, windows, window_mask, window_valid)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=prompt_mask, **generation)

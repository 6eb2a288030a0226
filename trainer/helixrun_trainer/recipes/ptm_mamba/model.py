"""The PTM-Mamba network: gated ESM fusion, bidirectional Mamba blocks, tied LM head.

    tok = Embedding(59, d)(ids)
    esm = Linear(esm_dim, d, no bias)(ESM-2 layer-33 states of the ESM input)  # PTM and masked positions -> <mask>
    g   = sigmoid(Linear(2d, 1)([tok; esm]));  h = g * tok + (1 - g) * esm   # one gate value per position
    h   = h + Linear(2d, d)([Mamba_fwd(RMSNorm_f(h)); flip(Mamba_bwd(flip(RMSNorm_b(h))))])   x layers
    logits = RMSNorm(h) @ tok.weight^T                                        # tied head

As the reference's `BiDirectionMixerModel` (protein_lm/modeling/models/mamba/lm.py) builds it, with
its initialisation: Mamba's own for the mixers (dt bias = inverse softplus of log-uniform [0.001, 0.1],
A = 1..N, D = 1; transformers' `MambaMixer` constructor does this as mamba-ssm's `Mamba` does), every
mixer's out_proj re-drawn Kaiming-uniform and divided by sqrt(layers), other Linear biases zero,
embeddings N(0, 0.02). The mixers are transformers' `MambaMixer` (its CUDA kernels when mamba-ssm is
installed, its pure-PyTorch path otherwise). The backward stack reads each sequence reversed within its
own length, so padding stays at the end (the reference flips the padded batch, so its backward pass
starts on padding). The ESM encoder is frozen and runs without gradients; it is a submodule so that the
on-the-fly path moves with the model, but checkpoints skip it (frozen).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from helixrun_trainer.recipes.ptm_mamba import vocab


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first `length` positions along dim 1; padding positions stay in place."""
    batch, width = x.shape[:2]
    pos = torch.arange(width, device=x.device).expand(batch, width)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(pos < lengths, lengths - 1 - pos, pos)
    if x.dim() == 3:
        index = index.unsqueeze(-1).expand_as(x)
    return x.gather(1, index)


class BiMambaBlock(nn.Module):
    def __init__(self, config, layer_idx: int):
        from transformers.models.mamba.modeling_mamba import MambaMixer, MambaRMSNorm

        super().__init__()
        d = config.hidden_size
        # One norm per direction, as the reference's forward and backward mamba_ssm Blocks each have.
        self.forward_norm = MambaRMSNorm(d, eps=config.layer_norm_epsilon)
        self.backward_norm = MambaRMSNorm(d, eps=config.layer_norm_epsilon)
        self.forward_mixer = MambaMixer(config, layer_idx)
        self.backward_mixer = MambaMixer(config, layer_idx)
        self.merge = nn.Linear(2 * d, d)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        fwd = self.forward_mixer(self.forward_norm(hidden), attention_mask=mask)
        reversed_hidden = reverse_within_length(hidden, lengths)
        bwd = reverse_within_length(self.backward_mixer(self.backward_norm(reversed_hidden), attention_mask=mask),
                                    lengths)
        return hidden + self.merge(torch.cat([fwd, bwd], dim=-1))


class PTMMamba(nn.Module):
    def __init__(self, d_model: int, layers: int, esm: nn.Module | None, esm_dim: int, esm_layer: int,
                 state_size: int = 16, conv_kernel: int = 4, expand: int = 2):
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaRMSNorm

        super().__init__()
        # use_mambapy: without mamba-ssm's CUDA kernels, mambapy's parallel scan (when installed) instead of a
        # Python loop over positions; ~2x faster on CPU, same numbers.
        config = MambaConfig(hidden_size=d_model, num_hidden_layers=layers, state_size=state_size,
                             conv_kernel=conv_kernel, expand=expand, vocab_size=vocab.VOCAB_SIZE,
                             pad_token_id=vocab.PAD, use_mambapy=True)
        self.config = config
        self.d_model, self.esm_dim, self.esm_layer = d_model, esm_dim, esm_layer
        self.embed = nn.Embedding(vocab.VOCAB_SIZE, d_model, padding_idx=vocab.PAD)
        self.esm_proj = nn.Linear(esm_dim, d_model, bias=False)
        self.gate = nn.Linear(2 * d_model, 1)
        self.blocks = nn.ModuleList(BiMambaBlock(config, i) for i in range(layers))
        self.norm_f = MambaRMSNorm(d_model, eps=config.layer_norm_epsilon)
        self.esm = esm
        if esm is not None:
            for p in esm.parameters():
                p.requires_grad_(False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's `_init_weights` (lm.py, GPT-2's scheme): embeddings N(0, 0.02), Linear biases zero,
        each mixer's out_proj Kaiming-uniform / sqrt(layers); dt, A and D keep Mamba's init from the mixers."""
        nn.init.normal_(self.embed.weight, std=0.02)
        for linear in (self.gate, *(block.merge for block in self.blocks)):
            nn.init.zeros_(linear.bias)
        for block in self.blocks:
            for mixer in (block.forward_mixer, block.backward_mixer):
                nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
                mixer.out_proj.weight /= math.sqrt(len(self.blocks))

    @torch.no_grad()
    def esm_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """ESM-2 layer `esm_layer` states of the ESM view of `input_ids` (PTM and <mask> -> ESM <mask>)."""
        if self.esm is None:
            raise RuntimeError("no ESM encoder: pass precomputed esm_embeddings")
        table = torch.tensor(vocab.TO_ESM, device=input_ids.device)
        esm_ids = table[input_ids]
        was_training = self.esm.training
        self.esm.eval()
        out = self.esm(input_ids=esm_ids, attention_mask=attention_mask, output_hidden_states=True)
        self.esm.train(was_training)
        layers = len(out.hidden_states) - 1
        states = out.last_hidden_state if self.esm_layer >= layers else out.hidden_states[self.esm_layer]
        return states.float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                esm_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        if esm_embeddings is None:
            esm_embeddings = self.esm_states(input_ids, attention_mask)
        tok = self.embed(input_ids)
        esm = self.esm_proj(esm_embeddings.to(self.esm_proj.weight.dtype))
        g = torch.sigmoid(self.gate(torch.cat([tok, esm], dim=-1)))
        hidden = g * tok + (1 - g) * esm
        lengths = attention_mask.sum(1)
        for block in self.blocks:
            hidden = block(hidden, attention_mask, lengths)
        return self.norm_f(hidden) @ self.embed.weight.t()


def tiny_esm():
    from transformers import EsmConfig, EsmModel

    config = EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, position_embedding_type="rotary", token_dropout=True,
                       pad_token_id=1, mask_token_id=32, max_position_embeddings=1026)
    return EsmModel(config, add_pooling_layer=False)

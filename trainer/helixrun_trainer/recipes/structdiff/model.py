"""StructDiff's network: ESM-2 (+LoRA) embeddings, a structure encoder, a class- and structure-conditioned denoiser.

    x0      = ESM-2(sequence)                       [B, L, E]   (LoRA r 16 on query/value; the diffusion space)
    s       = StructureEncoder(features)            [B, L, H]   CNN (kernels 3/5/7) + transformer layer
    x_t     = sqrt(ᾱ_t) x0' + sqrt(1-ᾱ_t) ε         x0' = x0 with its gradient stopped (stage separation)
    ε̂       = Denoiser(x_t, t, class, s)            + time, class and position embeddings; rotary
                                                     self-attention, cross-attention to s, FFN; x layers
    logits  = Decoder(x0)                            Linear(E -> 33): embeddings back to residues
    loss    = MSE(ε̂, ε) + CE(logits, residues)

As the reference's separated training (structdiff/training/separated_training.py) the ε loss never
reaches the sequence encoder: the diffusion learns on embeddings it cannot move (the encoder learns,
through its LoRA, from the decoder's CE only), unless model.options.diffusionTrainsEncoder asks for the
joint path. Peptide classes (0 antimicrobial, 1 antifungal, 2 antiviral; 3 = none) and the structure
are each replaced by their null for 10% of training samples, so sampling can use classifier-free
guidance. An EMA of every trainable weight (decay model.options.emaDecay, 0.9999, with the usual
(1+n)/(10+n) warm-up) lives in buffers, so checkpoints carry it and resume is exact; it is updated once
per optimizer step (see `update_ema`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from helixrun_trainer.recipes.structdiff.structure import FEATURES

CLASSES = ("antimicrobial", "antifungal", "antiviral")
NO_CLASS = len(CLASSES)  # the class embedding's null entry: unlabelled peptides and dropped conditions


def betas_for(schedule: str, timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """The reference's schedules (structdiff/diffusion/noise_schedule.py): linear β; sqrt:
    β = sqrt(linspace(β_start², β_end², T)); cosine: Nichol & Dhariwal's ᾱ, β clipped at 0.999."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if schedule == "sqrt":
        return torch.linspace(beta_start ** 2, beta_end ** 2, timesteps, dtype=torch.float64).sqrt()
    if schedule == "cosine":
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(0, 0.999)
    raise ValueError(f"model.options.noiseSchedule: {schedule!r} (linear, sqrt or cosine)")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().unsqueeze(1) * freqs.unsqueeze(0)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return emb if dim % 2 == 0 else nn.functional.pad(emb, (0, 1))


def rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al., RoFormer) of [B, heads, L, head_dim], half-split layout."""
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:2 * half]
    return torch.cat([first * cos - second * sin, first * sin + second * cos, x[..., 2 * half:]], dim=-1)


class RotarySelfAttention(nn.Module):
    """Multi-head self-attention whose queries and keys carry rotary positions (relative offsets)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(rotate(q), rotate(k), v,
                                                              attn_mask=~pad[:, None, None, :])
        return self.out(attended.transpose(1, 2).reshape(batch, length, hidden))


class StructureEncoder(nn.Module):
    def __init__(self, hidden: int, heads: int, kernels=(3, 5, 7)):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(FEATURES, hidden, k, padding=k // 2) for k in kernels)
        self.fuse = nn.Linear(hidden * len(kernels), hidden)
        self.layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.0, batch_first=True)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = feats.transpose(1, 2)
        x = torch.cat([torch.relu(conv(x)) for conv in self.convs], dim=1).transpose(1, 2)
        x = self.fuse(x)
        return self.layer(x, src_key_padding_mask=~mask.bool())


class DenoiserLayer(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.self_attn = RotarySelfAttention(hidden, heads)
        self.cross_attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, x, cond, pad):
        x = x + self.self_attn(self.norm1(x), pad)
        h = self.norm2(x)
        x = x + self.cross_attn(h, cond, cond, key_padding_mask=pad, need_weights=False)[0]
        return x + self.ffn(self.norm3(x))


class Denoiser(nn.Module):
    def __init__(self, embed_dim: int, hidden: int, layers: int, heads: int, max_positions: int):
        super().__init__()
        self.inp = nn.Linear(embed_dim, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.peptide_class = nn.Embedding(len(CLASSES) + 1, hidden)
        # Learned absolute positions, as the reference's PositionalEncoding (max length + 2 for <cls>/<eos>).
        self.position = nn.Parameter(torch.randn(max_positions, hidden) * 0.02)
        self.layers = nn.ModuleList(DenoiserLayer(hidden, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, embed_dim)
        nn.init.zeros_(self.out.weight)  # ε̂ = 0 at init, as the reference's zero-initialised output projection
        nn.init.zeros_(self.out.bias)
        self.hidden = hidden

    def forward(self, x_t, t, cond, class_ids, mask):
        pad = ~mask.bool()
        h = self.inp(x_t) + self.position[:x_t.shape[1]]
        h = h + (self.time(timestep_embedding(t, self.hidden)) + self.peptide_class(class_ids)).unsqueeze(1)
        for layer in self.layers:
            h = layer(h, cond, pad)
        return self.out(self.norm(h))


class StructDiff(nn.Module):
    def __init__(self, esm: nn.Module, embed_dim: int, hidden: int, layers: int, heads: int, timesteps: int,
                 schedule: str, beta_start: float, beta_end: float, ema_decay: float, max_positions: int,
                 diffusion_trains_encoder: bool = False, vocab_size: int = 33):
        super().__init__()
        self.esm = esm
        self.structure = StructureEncoder(hidden, heads)
        self.null_structure = nn.Parameter(torch.zeros(hidden))
        self.denoiser = Denoiser(embed_dim, hidden, layers, heads, max_positions)
        self.decoder = nn.Linear(embed_dim, vocab_size)
        self.timesteps, self.ema_decay = timesteps, ema_decay
        self.diffusion_trains_encoder = diffusion_trains_encoder
        betas = betas_for(schedule, timesteps, beta_start, beta_end)
        alphas_bar = torch.cumprod(1 - betas, 0)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_bar", alphas_bar.float(), persistent=False)
        self._ema_names: list[str] = []
        self._last_versions: tuple | None = None

    # -- EMA -----------------------------------------------------------------------

    def init_ema(self) -> None:
        """Register an EMA buffer per trainable parameter (call after LoRA is applied)."""
        self._ema_names = [n for n, p in self.named_parameters() if p.requires_grad]
        for name, p in self.named_parameters():
            if p.requires_grad:
                self.register_buffer("ema__" + name.replace(".", "__"), p.detach().clone())
        self.register_buffer("ema_updates", torch.zeros(1, dtype=torch.long))  # 1-d: some digests view bytes

    def _ema_pairs(self):
        params = dict(self.named_parameters())
        for name in self._ema_names:
            yield params[name], getattr(self, "ema__" + name.replace(".", "__"))

    @torch.no_grad()
    def update_ema(self) -> None:
        """Fold the current weights into the EMA if an optimizer step changed them since the last fold.

        Called at the start of every training forward: the first micro-batch of step k folds in the weights
        after step k-1, so the EMA sees each optimizer step once, whatever the accumulation; a resumed run
        (new process, weights just loaded) folds in the checkpoint's weights exactly as the uninterrupted run
        did at that point."""
        versions = tuple(p._version for p, _ in self._ema_pairs())
        if versions == self._last_versions:
            return
        self._last_versions = versions
        n = int(self.ema_updates)
        decay = min(self.ema_decay, (1 + n) / (10 + n))
        for p, ema in self._ema_pairs():
            ema.mul_(decay).add_(p.detach().to(ema.dtype), alpha=1 - decay)
        self.ema_updates += 1
        self._last_versions = tuple(p._version for p, _ in self._ema_pairs())

    @torch.no_grad()
    def swap_ema(self) -> None:
        """Exchange live weights and EMA weights (call twice to restore)."""
        for p, ema in self._ema_pairs():
            tmp = p.detach().clone()
            p.copy_(ema)
            ema.copy_(tmp)
        self._last_versions = tuple(p._version for p, _ in self._ema_pairs())

    # -- forward -------------------------------------------------------------------

    def embed(self, input_ids, attention_mask):
        return self.esm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()

    def condition(self, feats, mask, drop: torch.Tensor | None = None):
        cond = self.structure(feats, mask)
        if drop is not None:
            cond = torch.where(drop.view(-1, 1, 1), self.null_structure.expand_as(cond), cond)
        return cond

    def forward(self, input_ids, attention_mask, residue_mask, structure, class_ids, t, noise, drop_structure):
        if self.training and self._ema_names:
            self.update_ema()
        x0 = self.embed(input_ids, attention_mask)
        target = x0 if self.diffusion_trains_encoder else x0.detach()  # stage separation: ε never moves x0
        ab = self.alphas_bar[t].view(-1, 1, 1)
        x_t = ab.sqrt() * target + (1 - ab).sqrt() * noise
        cond = self.condition(structure, attention_mask, drop_structure)
        eps = self.denoiser(x_t, t, cond, class_ids, attention_mask)
        m = residue_mask.unsqueeze(-1).float()
        mse = ((eps.float() - noise) ** 2 * m).sum() / (m.sum() * noise.shape[-1]).clamp(min=1)
        logits = self.decoder(x0)
        ce = nn.functional.cross_entropy(logits[residue_mask.bool()], input_ids[residue_mask.bool()])
        return mse, ce, logits

    @torch.no_grad()
    def sample(self, structure: torch.Tensor | None, class_ids: torch.Tensor | None, mask, generator: torch.Generator,
               guidance: float = 1.5, steps: int | None = None, sampler: str = "ddpm") -> torch.Tensor:
        """Embeddings [B, L, E] by DDPM (ancestral) or DDIM (deterministic, η = 0) over `steps` evenly spaced
        timesteps (all of them by default), with classifier-free guidance between the conditioned prediction
        (class and structure, each None for its null) and the unconditioned one (both null)."""
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler {sampler!r}: ddpm or ddim")
        device = self.alphas_bar.device
        batch, length = mask.shape
        embed_dim = self.decoder.in_features
        x = torch.randn((batch, length, embed_dim), generator=generator).to(device)
        null_structure = self.null_structure.expand(batch, length, -1)
        null_class = torch.full((batch,), NO_CLASS, dtype=torch.long, device=device)
        # The null vector is what training put in place of a dropped structure: with it as the condition,
        # guidance has nothing to push toward (an encoded all-zero structure would be a fake structure).
        cond = null_structure if structure is None else self.condition(structure, mask)
        classes = null_class if class_ids is None else class_ids.to(device)
        stride = max(1, self.timesteps // (steps or self.timesteps))
        schedule = list(range(0, self.timesteps, stride))[::-1]  # the reference's DDIM timesteps
        for i, t in enumerate(schedule):
            tt = torch.full((batch,), t, device=device, dtype=torch.long)
            eps_c = self.denoiser(x, tt, cond, classes, mask)
            eps_u = self.denoiser(x, tt, null_structure, null_class, mask)
            eps = eps_u + guidance * (eps_c - eps_u)
            ab = self.alphas_bar[t]
            ab_prev = self.alphas_bar[schedule[i + 1]] if i + 1 < len(schedule) else torch.tensor(1.0, device=device)
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            if i + 1 == len(schedule):
                return x0
            if sampler == "ddim":
                x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
                continue
            beta = 1 - ab / ab_prev
            mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x
            var = beta * (1 - ab_prev) / (1 - ab)
            x = mean + var.clamp(min=1e-20).sqrt() * torch.randn(x.shape, generator=generator).to(device)
        return x

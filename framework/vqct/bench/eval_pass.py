"""`vqct bench eval TARGET --data SHARDS`: the per-image pass of `vqct eval` against the same
work written plainly, and against the model's forward alone, interleaved in one process.

- vqct: `Evaluator.update`, what `vqct eval` runs per batch.
- plain: the same model on whole batches in NCHW, then the same reconstruction metrics, code
  counts and caption features: how `vqct eval` ran before it chunked its CPU batches.
- forward: encode and decode alone, in vqct's layout and chunks: what no evaluation pass can
  beat on this machine, so `fraction_of_forward` says how much is left to gain.

The batches are decoded once, before timing: the loader is not measured here (`vqct bench
data` measures it). For a model with alignment heads the vqct pass also runs them, which the
other two do not.
"""

from __future__ import annotations

import copy
from itertools import islice

import torch

from vqct.bench.measure import device_name, time_interleaved
from vqct.errors import UserError
from vqct.eval.evaluate import CPU_IMAGE_CHUNK, Evaluator
from vqct.eval.reconstruction import ReconstructionMetrics
from vqct.host_memory import keep_freed_memory


def _plain_pass(model, text_encoder, batches, device) -> None:
    metrics = ReconstructionMetrics(device)
    with torch.no_grad():
        for batch in batches:
            images = batch.images.to(device)
            zq, _, indices = model.encode(images)
            metrics.update(images, model.decode(zq))
            model.quantizer.code_counts(indices)
            text_encoder.encode(batch.captions)


def _forward_pass(model, batches, device) -> None:
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    chunk = CPU_IMAGE_CHUNK if device.type == "cpu" else None
    with torch.no_grad():
        for batch in batches:
            images = batch.images.to(device)
            for part in images.split(chunk or len(images)):
                model.decode(model.encode(part.contiguous(memory_format=layout))[0])


def bench_eval(directory, data, batch_size: int, samples: int, rounds: int) -> dict:
    from vqct.data.loader import ImageCaptionStream, Loader
    from vqct.data.shards import resolve_shards
    from vqct.text.encoders import TextEncoder
    from vqct.tokenizer.load import load_tokenizer, tokenizer_config

    cfg = tokenizer_config(directory)
    urls = resolve_shards(data, "--data")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        keep_freed_memory()  # as vqct eval does; for all three passes alike
    text_encoder = TextEncoder(cfg.text.model, cfg.align.context_length, device=device)
    model, cfg = load_tokenizer(directory, device, text_encoder)
    stream = ImageCaptionStream(urls, image_size=cfg.data.image_size, shuffle_buffer=0, epochs=1)
    batches = list(islice(Loader(stream, batch_size=batch_size, num_workers=0), -(-samples // batch_size)))
    count = sum(len(b.captions) for b in batches)
    if not count:
        raise UserError(f"--data {data}: no usable sample")
    plain_model = copy.deepcopy(model)  # before the Evaluator changes the layout of its own
    ours = Evaluator(model, text_encoder, device, None).model

    def vqct_pass() -> None:
        evaluator = Evaluator(ours, text_encoder, device, None)
        for batch in batches:
            evaluator.update(batch.images, batch.captions)

    passes = {"vqct": vqct_pass, "plain": lambda: _plain_pass(plain_model, text_encoder, batches, device),
              "forward": lambda: _forward_pass(ours, batches, device)}
    seconds = time_interleaved(passes, rounds, 1, device)
    rate = {name: round(count / s, 1) for name, s in seconds.items()}
    return {"bench": "eval", "device": device_name(device), "recipe": cfg.recipe, "model": cfg.model.preset,
            "image_size": cfg.data.image_size, "samples": count, "batch_size": batch_size, "rounds": rounds,
            "heads": model.align is not None, "images_per_s": rate,
            "speedup_vs_plain": round(seconds["plain"] / seconds["vqct"], 3),
            "fraction_of_forward": round(seconds["forward"] / seconds["vqct"], 3), "torch": torch.__version__}

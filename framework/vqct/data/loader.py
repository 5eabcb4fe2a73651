"""The streaming image-caption loader: shards -> split by node and worker -> shuffle ->
decode -> batches, with every skipped sample counted by kind.

Epochs are exactly-once: each epoch the shard list is shuffled with a seed shared by all
ranks, then split by rank (webdataset's `split_by_node`) and by DataLoader worker
(`split_by_worker`). Training is counted in steps and the stream runs on into the next
epoch, so every rank takes the same number of steps however uneven its shards are (a
rank that runs dry first simply starts its next epoch): no DDP hang at epoch ends.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from vqct.config.schema import DataConfig
from vqct.data.decode import BadSample, decode_sample
from vqct.records.storage import enable_s3_shards

SKIP_KINDS = ("tar_error", "missing_image", "bad_image", "missing_caption", "bad_caption")


class NoUsableSamples(RuntimeError):
    """A reader went through a whole epoch of its shards without one usable sample."""


class SkipCounter:
    """Counts skipped samples by kind inside one reader (one DataLoader worker)."""

    def __init__(self):
        self.counts = dict.fromkeys(SKIP_KINDS, 0)
        self._warned = 0
        self._inner_error_source = None

    def add(self, kind: str, detail: str = "") -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self._warned < 5:  # a few examples in the log; the counts say the rest
            self._warned += 1
            print(f"warning: skipped sample ({kind}) {detail}", file=sys.stderr)

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset handler for unreadable shards and broken tar members: count, go on.

        A tar cut short reaches the handler twice: from the member being read (message
        tagged "@ <stream>"), then from the shard's expander (args end with stream, url).
        Count it once."""
        args = getattr(exn, "args", ())
        if len(args) >= 2 and hasattr(args[-2], "read"):  # the expander's report
            if self._inner_error_source == str(args[-2]):
                self._inner_error_source = None
                return True
        elif args and " @ " in str(args[0]):  # the member's report
            self._inner_error_source = str(args[0]).rsplit(" @ ", 1)[1]
        self.add("tar_error", f"{type(exn).__name__}: {str(exn)[:300]}")
        return True


def _mix(*parts: int) -> int:
    return hash(parts) & 0x7FFFFFFF


class _NotingHandler:
    """Passes errors on to HANDLER and notes the shards (the URL each report ends with) that had one."""

    def __init__(self, handler):
        self.handler, self.urls = handler, set()

    def __call__(self, exn: Exception) -> bool:
        args = getattr(exn, "args", ())
        if args and isinstance(args[-1], str):
            self.urls.add(args[-1])
        return self.handler(exn)


def _open_shards(handler: _NotingHandler):
    """webdataset's url_opener, plus the check it leaves out: a stream is closed once its tar is
    read, and a fetch that failed (curl's exit status, a pipe command's) goes to HANDLER, so
    that a shard that cannot be fetched is counted (once) instead of reading as an empty one."""
    def stage(shards):
        enable_s3_shards()  # here: the stage runs in each reader process
        for shard in shards:
            url = shard["url"]
            try:
                stream = wds.gopen(url)
            except Exception as exn:
                exn.args = exn.args + (url,)
                if handler(exn):
                    continue
                raise
            yield {**shard, "stream": stream}
            try:
                stream.close()
            except Exception as exn:
                exn.args = exn.args + (url,)
                if url not in handler.urls and not handler(exn):
                    raise
    return stage


def _samples(handler):
    """Shards -> raw samples (webdataset's tarfile_to_samples, with _open_shards)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    handler = _NotingHandler(handler)
    return [_open_shards(handler), lambda streams: tar_file_expander(streams, handler=handler),
            lambda files: group_by_keys(files, handler=handler)]


def _every(readers: int, reader: int):
    """A pipeline stage that keeps the samples whose position is READER modulo READERS."""
    def stage(samples):
        for index, sample in enumerate(samples):
            if index % readers == reader:
                yield sample
    return stage


@dataclass
class ImageDecoder:
    """An image-caption sample -> {image, caption, key} (a class, not a closure: DataLoader
    worker processes receive it pickled)."""
    image_size: int

    def __call__(self, sample: dict, rng: Optional[random.Random]) -> dict:
        image, caption, key = decode_sample(sample, self.image_size, rng)
        return {"image": image, "caption": caption, "key": key}


class ImageCaptionStream(IterableDataset):
    """Yields dicts (what the decoder gives: image, caption, key; then reader, skipped) epoch
    after epoch.

    Readers (ranks x DataLoader workers) split the shards between them; with fewer shards
    than readers each reader reads every shard and keeps one sample in (readers), still
    exactly once per epoch over all readers. A reader whose own shards yield nothing in an
    epoch (empty or broken shards) falls back to that sample split over all shards, and
    only when those yield nothing either does the stream stop (NoUsableSamples)."""

    def __init__(self, urls: list[str], image_size: int, seed: int = 0, shuffle_buffer: int = 256,
                 random_crop: bool = False, epochs: Optional[int] = None, start_epoch: int = 0,
                 decoder: Optional[Callable[[dict, Optional[random.Random]], dict]] = None):
        super().__init__()
        self.urls = list(urls)
        self.image_size = image_size
        # raw sample -> the dict a batch is made of; BadSample skips it. Code shards bring their
        # own (data/code_loader.py): the splitting, shuffling and counting stay the same.
        self.decoder = decoder or ImageDecoder(image_size)
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.random_crop = random_crop
        self.epochs = epochs
        self.start_epoch = start_epoch

    def _decoded(self, samples, counter: SkipCounter, rng: Optional[random.Random]):
        for sample in samples:
            try:
                yield self.decoder(sample, rng)
            except BadSample as bad:
                counter.add(bad.kind, f"key={sample.get('__key__')} url={sample.get('__url__')}")

    def _epoch(self, epoch: int, counter: SkipCounter, reader: int, readers: int, by_samples: bool):
        # The shard order must be the same on every rank before splitting: seed by epoch only.
        shards = wds.SimpleShardList(self.urls, seed=_mix(self.seed, epoch))
        if by_samples:  # every reader reads every shard: only reader 0 counts a broken one
            handler = counter.tar_handler if reader == 0 else (lambda exn: True)
            stages = [shards, *_samples(handler), _every(readers, reader)]
        else:
            stages = [shards, wds.split_by_node, wds.split_by_worker, *_samples(counter.tar_handler)]
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 4,
                                      seed=_mix(self.seed, epoch, reader)))
        rng = random.Random(_mix(self.seed, epoch, reader, 1)) if self.random_crop else None
        return self._decoded(wds.DataPipeline(*stages), counter, rng)

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        reader, readers = rank * workers + worker, world * workers
        counter = SkipCounter()
        by_samples = len(self.urls) < readers
        epoch = self.start_epoch
        while self.epochs is None or epoch < self.start_epoch + self.epochs:
            yielded = 0
            for item in self._epoch(epoch, counter, reader, readers, by_samples):
                yielded += 1
                yield {**item, "reader": reader, "skipped": dict(counter.counts)}
            if yielded == 0 and not by_samples:
                print(f"warning: reader {reader} (rank {rank}, worker {worker}) found no usable sample in its "
                      f"shards (skipped: {counter.counts}); it reads every shard and keeps one sample in "
                      f"{readers} from now on", file=sys.stderr)
                by_samples = True
                continue  # the same epoch again, split by samples
            if yielded == 0:
                raise NoUsableSamples(
                    f"no usable sample in any of the {len(self.urls)} shards (reader {reader}: rank {rank}, "
                    f"worker {worker}; skipped so far: {counter.counts}). Check the shards' contents "
                    "(vqct data inspect SHARDS)."
                )
            epoch += 1


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    captions: list[str]
    keys: list[str]
    reader: int
    skipped: dict = field(default_factory=dict)  # cumulative counts of this batch's reader


def collate(samples: list[dict]) -> Batch:
    # A batch is built inside one reader, and counts only grow: the last sample's are newest.
    return Batch(
        images=torch.stack([s["image"] for s in samples]),
        captions=[s["caption"] for s in samples],
        keys=[s["key"] for s in samples],
        reader=samples[-1]["reader"],
        skipped=samples[-1]["skipped"],
    )


class Loader:
    """A DataLoader over the stream that also totals skipped samples across its readers."""

    def __init__(self, stream: ImageCaptionStream, batch_size: int, num_workers: int,
                 collate_fn: Callable[[list[dict]], Any] = collate):
        self.dataloader = DataLoader(
            stream, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
            persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None,
        )
        self._per_reader: dict[int, dict] = {}

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.dataloader:
            self._per_reader[batch.reader] = batch.skipped
            yield batch

    @property
    def skipped(self) -> dict[str, int]:
        totals = dict.fromkeys(SKIP_KINDS, 0)
        for counts in self._per_reader.values():
            for kind, n in counts.items():
                totals[kind] = totals.get(kind, 0) + n
        return totals


def make_loader(urls: list[str], data: DataConfig, seed: int, train: bool = True,
                epochs: Optional[int] = None, start_epoch: int = 0) -> Loader:
    stream = ImageCaptionStream(
        urls,
        image_size=data.image_size,
        seed=seed,
        shuffle_buffer=data.shuffle_buffer if train else 0,
        random_crop=data.random_crop and train,
        epochs=epochs,
        start_epoch=start_epoch,
    )
    return Loader(stream, data.batch_size, data.num_workers)

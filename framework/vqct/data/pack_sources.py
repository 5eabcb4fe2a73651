"""Where `vqct data pack` finds images and captions: the four layouts users have.

Each reader yields Items (an image file, its captions, the split the dataset itself assigns
when it has one) and reports what it passed over (an image without a caption, a caption
without an image) through SKIP. Nothing here opens an image: readers only walk files and
tables, so that a million-image source is listed in seconds.

- folder: images with same-named caption files beside them (`cat.jpg` + `cat.txt`).
- coco: caption annotations (JSON with `images` and `annotations`) and an image folder.
- cub: the CUB-200 / Oxford-102 caption layout (Reed et al.): an image tree and a parallel
  text tree of `.txt` files with several captions each; the official split from
  `images.txt` + `train_test_split.txt` (CUB-200-2011) or `trainvalclasses.txt` +
  `testclasses.txt` (class-level splits of both datasets) when present.
- table: a CSV, TSV or Parquet file with an image-path column and a caption column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from vqct.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LAYOUTS = ("folder", "coco", "cub", "table")

Skip = Callable[[str, str, str], None]  # (kind, source, detail)


@dataclass(frozen=True)
class Item:
    source: str  # the image file
    captions: tuple[str, ...]
    split: Optional[str] = None  # "train" / "val" when the dataset says
    # The image's path as the dataset names it (relative to its root): the hash split keys on
    # it, so moving the dataset to another directory or machine keeps every image's split.
    name: str = ""


def _clean(lines) -> tuple[str, ...]:
    return tuple(line.strip() for line in lines if line and line.strip())


def _read_captions(path: Path) -> tuple[str, ...]:
    return _clean(path.read_text(encoding="utf-8", errors="replace").splitlines())


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} {path}: no such directory")
    return path


def read_folder(root: Path, skip: Skip) -> Iterator[Item]:
    for image in _images_under(_need_dir(root, "--images")):
        caption = image.with_suffix(".txt")
        captions = _read_captions(caption) if caption.is_file() else ()
        if not captions:
            skip("missing_caption", str(image), f"no caption in {caption.name}")
            continue
        yield Item(str(image), captions, name=image.relative_to(root).as_posix())


def read_coco(annotations: Path, images: Path, skip: Skip) -> Iterator[Item]:
    try:
        data = json.loads(annotations.read_text())
        files = {int(im["id"]): im["file_name"] for im in data["images"]}
        pairs = [(int(a["image_id"]), str(a["caption"])) for a in data["annotations"]]
    except FileNotFoundError:
        raise UserError(f"--annotations {annotations}: no such file") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--annotations {annotations}: not COCO caption annotations (a JSON with "
                        f"'images' [id, file_name] and 'annotations' [image_id, caption]): {exc}") from None
    _need_dir(images, "--images")
    captions: dict[int, list[str]] = {}
    for image_id, caption in pairs:
        if image_id not in files:
            skip("missing_image", f"image_id {image_id}", "a caption for an image the annotations do not list")
            continue
        captions.setdefault(image_id, []).append(caption)
    for image_id, name in sorted(files.items(), key=lambda kv: kv[1]):
        found = _clean(captions.get(image_id, ()))
        if not found:
            skip("missing_caption", str(images / name), "no caption in the annotations")
            continue
        yield Item(str(images / name), found, name=name)


def _official_cub_split(split_dir: Path) -> Callable[[str], Optional[str]] | None:
    """relative image path (class/name.jpg) -> 'train' / 'val', or None without split files."""
    images_txt, split_txt = split_dir / "images.txt", split_dir / "train_test_split.txt"
    if images_txt.is_file() and split_txt.is_file():
        ids = dict(line.split() for line in images_txt.read_text().splitlines() if line.strip())
        is_train = dict(line.split() for line in split_txt.read_text().splitlines() if line.strip())
        by_path = {path: "train" if is_train.get(i) == "1" else "val" for i, path in ids.items()}
        return lambda rel: by_path.get(rel)
    train_classes, test_classes = split_dir / "trainvalclasses.txt", split_dir / "testclasses.txt"
    if train_classes.is_file() and test_classes.is_file():
        train = set(train_classes.read_text().split())
        test = set(test_classes.read_text().split())
        return lambda rel: "train" if rel.split("/")[0] in train else "val" if rel.split("/")[0] in test else None
    return None


def read_cub(images: Path, text: Path, split_dir: Optional[Path], skip: Skip) -> Iterator[Item]:
    _need_dir(images, "--images")
    _need_dir(text, "--text")
    split_of = None
    for candidate in [split_dir] if split_dir else [images.parent, text.parent, images, text]:
        split_of = _official_cub_split(candidate)
        if split_of:
            break
    if split_dir and split_of is None:
        raise UserError(f"--split-dir {split_dir}: no images.txt + train_test_split.txt, nor "
                        "trainvalclasses.txt + testclasses.txt")
    by_stem = {p.relative_to(images).with_suffix("").as_posix(): p for p in _images_under(images)}
    for caption_file in sorted(text.rglob("*.txt")):
        rel = caption_file.relative_to(text).with_suffix("").as_posix()
        image = by_stem.get(rel)
        if image is None:
            skip("missing_image", str(caption_file), "no image of that name in the image tree")
            continue
        captions = _read_captions(caption_file)
        if not captions:
            skip("missing_caption", str(image), f"{caption_file.name} is empty")
            continue
        name = image.relative_to(images).as_posix()
        yield Item(str(image), captions, split_of(name) if split_of else None, name=name)


def _read_table(path: Path):
    import pandas as pd

    if not path.is_file():
        raise UserError(f"--table {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix in (".tsv", ".tab") else ",", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise UserError(f"--table {path}: cannot be read as {'Parquet' if suffix == '.parquet' else 'CSV/TSV'} "
                        f"({type(exc).__name__}: {str(exc)[:120]})") from None


def read_table(path: Path, image_column: str, caption_column: str, images: Optional[Path],
               skip: Skip) -> Iterator[Item]:
    frame = _read_table(path)
    for column in (image_column, caption_column):
        if column not in frame.columns:
            raise UserError(f"--table {path}: no column '{column}' (columns: {', '.join(map(str, frame.columns))}); "
                            "name them with --image-column / --caption-column")
    root = images or path.parent
    captions: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for image, caption in zip(frame[image_column], frame[caption_column]):
        image = str(image or "").strip()
        if not image:
            skip("missing_image", str(path), "a row without an image path")
            continue
        source = str(Path(image) if Path(image).is_absolute() else root / image)
        names.setdefault(source, image)
        captions.setdefault(source, []).extend(_clean(str(caption or "").splitlines()))
    for source, found in captions.items():  # one item per image, all its rows' captions
        if not found:
            skip("missing_caption", source, "empty caption cell")
            continue
        yield Item(source, tuple(found), name=names[source])

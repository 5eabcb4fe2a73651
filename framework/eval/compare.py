"""Side-by-side table of training runs from their final JSON lines (`make compare`).

    python -m vqct.eval.compare runs/compare/vqgan_shapes.json runs/compare/vqct_shapes.json
"""

from __future__ import annotations

import json
import sys

COLUMNS = [
    ("recipe", "recipe", "{}"),
    ("steps", "steps", "{}"),
    ("codebook_usage", "usage", "{:.1%}"),
    ("codebook_usage_adj", "usage adj", "{:.1%}"),
    ("codebook_usage_noun", "usage noun", "{:.1%}"),
    ("perplexity", "perplexity", "{:.1f}"),
    ("perplexity_adj", "perplexity adj", "{:.1f}"),
    ("perplexity_noun", "perplexity noun", "{:.1f}"),
    ("psnr", "val PSNR (dB)", "{:.2f}"),
    ("ssim", "val SSIM", "{:.3f}"),
    ("val_l1", "val L1", "{:.4f}"),
    ("images_per_s", "images/s", "{:.1f}"),
]


def last_json(path: str) -> dict:
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    return json.loads(lines[-1])


def table(results: list[dict]) -> str:
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = []
    for result in results:
        cells = [fmt.format(result[key]) if result.get(key) is not None else "-" for key, _, fmt in COLUMNS]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def main(paths: list[str]) -> int:
    results = [last_json(p) for p in paths]
    print(table(results), file=sys.stderr)
    print(json.dumps({"compare": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

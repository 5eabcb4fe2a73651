"""Side-by-side table of training runs from their final JSON lines and, when present, their
`vqct eval` results (`make compare`).

    python -m vqct.eval.compare runs/compare/vqgan_shapes.json runs/compare/vqct_shapes.json

For runs/compare/X.json, runs/compare/X.eval.json (the output of `vqct eval`) is read too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [
    ("recipe", "recipe", "{}"),
    ("steps", "steps", "{}"),
    ("codebook_usage", "usage (train)", "{:.1%}"),
    ("eval_codebook_usage", "usage (held-out)", "{:.1%}"),
    ("psnr", "val PSNR (dB)", "{:.2f}"),
    ("eval_psnr", "held-out PSNR (dB)", "{:.2f}"),
    ("eval_ssim", "held-out SSIM", "{:.3f}"),
    ("eval_retrieval_r1", "retrieval R@1", "{:.3f}"),
    ("eval_retrieval_r5", "retrieval R@5", "{:.3f}"),
    ("eval_masked_word_r1", "masked-word R@1", "{:.3f}"),
    ("eval_masked_word_r1_shuffled_images", "masked-word R@1, shuffled images", "{:.3f}"),
    ("eval_code_word_mse", "code-word MSE", "{:.3f}"),
    ("images_per_s", "images/s", "{:.1f}"),
]


def last_json(path: str | Path) -> dict:
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    return json.loads(lines[-1])


def load(path: str) -> dict:
    result = last_json(path)
    evaluated = Path(path).with_suffix(".eval.json")
    if evaluated.is_file():
        result.update({f"eval_{k}": v for k, v in last_json(evaluated).items()})
    return result


def table(results: list[dict]) -> str:
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = []
    for result in results:
        cells = [fmt.format(result[key]) if result.get(key) is not None else "-" for key, _, fmt in COLUMNS]
        rows.append("| " + " | ".join(cells) + " |")
    chance = next((r for r in results if r.get("eval_retrieval_r1_chance")), None)
    note = ""
    if chance:
        note = (f"\n\nChance: retrieval R@1 {chance['eval_retrieval_r1_chance']:.4f}, R@5 "
                f"{chance['eval_retrieval_r5_chance']:.4f} ({chance['eval_retrieval_candidates']} distinct captions).")
    return "\n".join([header, rule, *rows]) + note


def main(paths: list[str]) -> int:
    results = [load(p) for p in paths]
    print(table(results), file=sys.stderr)
    print(json.dumps({"compare": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

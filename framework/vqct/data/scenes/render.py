"""A scene graph -> its picture and its segmentation, the same every time.

Objects are drawn back to front on a canvas SUPERSAMPLE times the image side; the picture is
that canvas averaged down (anti-aliased edges), and the segmentation maps (class per pixel,
instance per pixel) take each output pixel's centre sample of the canvas, so a pixel's label
is the object whose surface covers the pixel's centre. Class ids: 0 background, 1 + the
shape's index in SHAPES; instance ids: 0 background, 1 + the object's index in the graph.
Why by hand: no drawing library here renders patterned, occluding shapes with their masks.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from vqct.data.scenes.world import COLOURS, SHAPES, Background, SceneGraph, SceneObject

SUPERSAMPLE = 4
CLASS_NAMES = ("background", *SHAPES)


def render(graph: SceneGraph, size: int = 64) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """(RGB picture, classes (size, size) uint8, instances (size, size) uint8)."""
    side = size * SUPERSAMPLE
    canvas = _background(graph.background, side)
    classes = np.zeros((side, side), dtype=np.uint8)
    instances = np.zeros((side, side), dtype=np.uint8)
    for index, obj in sorted(enumerate(graph.objects), key=lambda pair: pair[1].depth):
        box = _pixel_box(obj, side)  # everything below happens inside the object's box only
        mask = shape_mask(obj, side)[box]
        canvas[box][mask] = _surface(obj, side, box)[mask]
        classes[box][mask] = 1 + SHAPES.index(obj.shape)
        instances[box][mask] = 1 + index
    picture = Image.fromarray(canvas).resize((size, size), Image.BOX)
    centre = SUPERSAMPLE // 2
    return picture, classes[centre::SUPERSAMPLE, centre::SUPERSAMPLE].copy(), \
        instances[centre::SUPERSAMPLE, centre::SUPERSAMPLE].copy()


def _pixel_box(obj: SceneObject, side: int) -> tuple[slice, slice]:
    """The canvas rows and columns OBJ's surface can reach (its radius around its centre)."""
    r = obj.radius * side + 2
    x0, x1 = max(0, int(obj.x * side - r)), min(side, int(math.ceil(obj.x * side + r)))
    y0, y1 = max(0, int(obj.y * side - r)), min(side, int(math.ceil(obj.y * side + r)))
    return slice(y0, y1), slice(x0, x1)


def shape_mask(obj: SceneObject, side: int) -> np.ndarray:
    """Where OBJ's surface is, on a SIDE x SIDE canvas (bool)."""
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
    if obj.shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if obj.shape == "ring":
            hole = 0.55 * r
            draw.ellipse([cx - hole, cy - hole, cx + hole, cy + hole], fill=0)
    elif obj.shape == "semicircle":
        draw.pieslice([cx - r, cy - r, cx + r, cy + r], 180 + obj.rotation, 360 + obj.rotation, fill=255)
    else:
        draw.polygon(_outline(obj.shape, cx, cy, r, obj.rotation), fill=255)
    return np.asarray(image) > 0


def _outline(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    if shape == "square":
        points = [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]
    elif shape == "diamond":
        points = [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)]
    elif shape == "cross":
        a = 0.33
        points = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a),
                  (-a, -a)]
    elif shape == "star":
        points = [_polar(0.45 if k % 2 else 1.0, -90 + 36 * k) for k in range(10)]
    else:
        corners = {"triangle": 3, "pentagon": 5, "hexagon": 6}[shape]
        points = [_polar(1.0, -90 + 360 * k / corners) for k in range(corners)]
    turn = math.radians(rotation)
    cos, sin = math.cos(turn), math.sin(turn)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def _polar(radius: float, degrees: float) -> tuple[float, float]:
    return radius * math.cos(math.radians(degrees)), radius * math.sin(math.radians(degrees))


@functools.lru_cache(maxsize=4)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel coordinates of a SIDE canvas, float32; read-only, shared by every scene."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _surface(obj: SceneObject, side: int, box: tuple[slice, slice]) -> np.ndarray:
    """OBJ's colour with its pattern in a darker shade of it, over BOX of the canvas. The
    pattern is anchored to the canvas, not the object: it reads as the surface's texture."""
    base = np.array(COLOURS[obj.colour], dtype=np.float32)
    shade = base * 0.55 if obj.colour != "white" else np.array([170, 170, 170], dtype=np.float32)
    yy, xx = (axis[box] for axis in _grid(side))
    period = side * 0.08
    if obj.pattern == "striped":
        on = ((xx + yy) % period) < period * 0.45
    elif obj.pattern == "dotted":
        dx, dy = (xx % period) - period / 2, (yy % period) - period / 2
        on = dx * dx + dy * dy < (period * 0.25) ** 2
    elif obj.pattern == "checked":
        on = ((xx // period) + (yy // period)) % 2 == 0
    else:
        on = np.zeros(xx.shape, dtype=bool)
    return np.where(on[..., None], shade, base).astype(np.uint8)


def _background(background: Background, side: int) -> np.ndarray:
    """Smooth backgrounds are computed at a quarter of the canvas and scaled up (they have no
    edges to anti-alias); the grid's thin lines are drawn at full size."""
    if background.kind == "grid":
        image = Image.new("RGB", (side, side), background.tone)
        draw = ImageDraw.Draw(image)
        period, width = max(4, side // 8), max(1, side // 64)
        for at in range(0, side, period):
            draw.rectangle([at, 0, at + width - 1, side - 1], fill=background.tone2)
            draw.rectangle([0, at, side - 1, at + width - 1], fill=background.tone2)
        return np.array(image)
    small = max(2, side // SUPERSAMPLE)
    if background.kind == "gradient":
        yy, xx = (axis / (small - 1) for axis in _grid(small))
        turn = math.radians(background.angle)
        t = np.clip((xx - 0.5) * math.cos(turn) + (yy - 0.5) * math.sin(turn) + 0.5, 0, 1)
    else:  # noise: a coarse random field, smoothly interpolated
        coarse = np.random.default_rng(background.seed).random((6, 6), dtype=np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((small, small), Image.BICUBIC),
                       dtype=np.float32) / 255.0
    a, b = (np.array(tone, dtype=np.float32) for tone in (background.tone, background.tone2))
    small_image = Image.fromarray((a * (1 - t[..., None]) + b * t[..., None]).astype(np.uint8))
    return np.array(small_image.resize((side, side), Image.BILINEAR))

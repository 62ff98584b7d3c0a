"""The built-in shapes world: deterministic scenes, rendered images, captions and questions.

A scene holds one or two objects; each has a colour (6) and a shape (3); with two objects one
stands on the left and one on the right. (Objects carry a size field for compatibility; the
world uses one size: a size attribute made 32-px shapes hard to tell apart — circle vs
triangle at 4 px radius — and cost the demo exact-match accuracy.) Scene `i` of a split is a pure function of
(seed, split, i), so every process and every re-run sees the same world.

Splits:
  train           scenes for prefix training; never uses a held-out colour/shape combination
  eval            fresh scenes (other random draws) from the same distribution as train
  heldout_combos  scenes where every object is a colour/shape combination never seen in train
  test            fresh scenes like eval's, from a stream of their own: results are reported on
                  it, settings are chosen on eval (the dev split)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 50),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("big",)
POSITIONS = ("left", "right")
HELDOUT_COMBOS = frozenset({("green", "triangle"), ("purple", "circle"), ("orange", "square")})
SPLITS = ("train", "eval", "heldout_combos", "test")
NUMBER_WORDS = {1: "one", 2: "two"}


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size: str
    position: str  # "left", "right" or "center" (single object)


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    objects: tuple[Obj, ...]
    jitter: tuple[float, ...]  # per-object (dx, dy) in [-1, 1] and background shade

    @property
    def key(self) -> str:
        return f"{self.split}-{self.index:08d}"

    def to_json(self) -> dict:
        return {"split": self.split, "index": self.index, "objects": [asdict(o) for o in self.objects]}


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    return SPLITS.index(split)


def _draw_object(rng: np.random.Generator, split: str) -> tuple[str, str, str]:
    while True:
        color = str(rng.choice(list(COLORS)))
        shape = str(rng.choice(SHAPES))
        size = str(rng.choice(SIZES))
        held = (color, shape) in HELDOUT_COMBOS
        if split == "heldout_combos" and held:
            return color, shape, size
        if split != "heldout_combos" and not held:
            return color, shape, size


def make_scene(seed: int, split: str, index: int) -> Scene:
    """Scene `index` of `split`: a pure function of its arguments."""
    rng = np.random.default_rng([seed, _split_id(split), index])
    n = int(rng.integers(1, 3))
    drawn = [_draw_object(rng, split) for _ in range(n)]
    positions = ["center"] if n == 1 else ["left", "right"]
    objects = tuple(Obj(c, s, z, p) for (c, s, z), p in zip(drawn, positions))
    jitter = tuple(float(x) for x in rng.uniform(-1, 1, size=2 * n + 1))
    return Scene(split, index, objects, jitter)


def describe(obj: Obj) -> str:
    return f"a {obj.color} {obj.shape}"


def caption(scene: Scene) -> str:
    """The canonical caption: 'a red circle' or '... on the left and ... on the right'."""
    if len(scene.objects) == 1:
        return describe(scene.objects[0])
    left, right = scene.objects
    return f"{describe(left)} on the left and {describe(right)} on the right"


def questions(scene: Scene) -> list[tuple[str, str]]:
    """Every (question, answer) pair the scene answers unambiguously."""
    objs = scene.objects
    pairs = [("how many objects are there ?", NUMBER_WORDS[len(objs)])]
    for o in objs:
        if sum(p.shape == o.shape for p in objs) == 1:
            pairs.append((f"what color is the {o.shape} ?", o.color))
            if len(SIZES) > 1:
                pairs.append((f"is the {o.shape} big or small ?", o.size))
        if sum(p.color == o.color for p in objs) == 1:
            pairs.append((f"what shape is the {o.color} object ?", o.shape))
        if o.position in POSITIONS:
            pairs.append((f"what color is the object on the {o.position} ?", o.color))
            pairs.append((f"what shape is the object on the {o.position} ?", o.shape))
    return pairs


def lookup_questions(scene: Scene) -> list[tuple[str, str]]:
    """The questions of a two-object scene that only finding the asked object answers: the answer is
    one object's colour or shape and the other object's differs (a reader that picks an object by
    its place in the caption, not by what the question names, is right half of the time)."""
    if len(scene.objects) != 2:
        return []
    out = []
    for q, a in questions(scene):
        attr = "color" if a in COLORS else "shape" if a in SHAPES else None
        if attr and len({getattr(o, attr) for o in scene.objects}) == 2:
            out.append((q, a))
    return out


SUPERSAMPLE = 4


def render(scene: Scene, image_size: int = 32) -> Image.Image:
    """Draw the scene: shapes on a dark background, slightly jittered in place and shade.
    Drawn at 4x and downsampled (antialiased edges keep shapes legible at 32 px)."""
    s = image_size * SUPERSAMPLE
    shade = int(30 + 15 * scene.jitter[-1])
    img = Image.new("RGB", (s, s), (shade, shade, shade))
    draw = ImageDraw.Draw(img)
    for i, o in enumerate(scene.objects):
        dx, dy = scene.jitter[2 * i], scene.jitter[2 * i + 1]
        cx = {"left": 0.27, "right": 0.73, "center": 0.5}[o.position] * s + dx * 0.06 * s
        cy = 0.5 * s + dy * 0.15 * s
        r = (0.14 if o.size == "small" else 0.21) * s
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            q = r * 0.9
            draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.85), (cx + r, cy + r * 0.85)], fill=fill)
    return img.resize((image_size, image_size), Image.BOX)


def scenes(seed: int, split: str, count: int, start: int = 0):
    """Scenes start..start+count-1 of a split."""
    for i in range(start, start + count):
        yield make_scene(seed, split, i)

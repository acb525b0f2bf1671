"""The held-out meme generator: designed and written before tuning, never tuned on.

The near-duplicate benchmark reports this generator apart from the ones the fingerprint's
thresholds were tuned on (:data:`loadtest.generators.TUNING`), so its recall and false
merges are an honest estimate for memes drawn independently of the tuning corpus. Do not
change the fingerprint to fit it; if it exposes a weakness, add a new tuning generator
with that property and keep this one as it is.

Four styles, each with its own picture model (drawn landscapes, not the 1/f fields of
:func:`loadtest.meme_kit.photo_field`) and its own captions (none from the tuning pools):

* ``poster`` — a "demotivational" poster: black canvas, picture inset in a thin white
  frame, a large serif title and a small sans subtitle under it;
* ``labels`` — a scene with three short labels placed inside the picture (white bold
  text with a black outline, where the labelled things would be);
* ``post`` — a social-media post screenshot: white card, avatar, name and handle, up to
  three lines of text, the picture below with rounded corners;
* ``shadow`` — one caption across the middle of the picture, white with a soft drop
  shadow and no outline.
"""

from __future__ import annotations

import random
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from loadtest.meme_kit import Layout, draw_text, hsv

HELDOUT_EN: Final[tuple[str, ...]] = (
    "Ambition",
    "Teamwork",
    "Patience",
    "Success",
    "Mistakes",
    "Leadership",
    "Motivation",
    "Potential",
    "Dedication",
    "Adulthood",
    "Procrastination",
    "Perseverance",
)
HELDOUT_SUB: Final[tuple[str, ...]] = (
    "it could be that your purpose is to be a warning",
    "none of us is as dumb as all of us",
    "the journey of a thousand miles ends in a ditch",
    "if at first you don't succeed, skydiving is not for you",
    "because nothing says progress like a spreadsheet",
    "it's not a bug, it's a surprise feature",
    "never put off till tomorrow what you can skip",
    "hard work never killed anyone, but why risk it",
)
HELDOUT_LABELS: Final[tuple[str, ...]] = (
    "Me",
    "You",
    "Rent",
    "Exams",
    "Cats",
    "Taxes",
    "Sleep",
    "Gym",
    "Tea",
    "Snacks",
    "My phone",
    "Chores",
    "Email",
    "饭",
    "作业",
    "快递",
    "工资",
)
HELDOUT_POSTS: Final[tuple[str, ...]] = (
    "nobody warned me that being an adult is mostly answering emails",
    "just saw a pigeon walk into a bakery like it owned the place",
    "my plants are thriving and I am not, what is their secret",
    "the group chat has been silent for three days and I am worried",
    "I bought a treadmill in January and now it holds my laundry",
    "told myself one episode and now the sun is coming up again",
    "今天的天气适合躺在床上什么都不做",
    "同事问我周末干了什么，我说在充电",
    "我的钱包和我的体重都在稳定地变化",
)
HELDOUT_MIDDLE: Final[tuple[str, ...]] = (
    "还能再抢救一下",
    "这就是命运吗",
    "别问，问就是累",
    "我只是个孩子",
    "快乐是什么",
    "THIS IS MY LIFE NOW",
    "EVERYTHING IS AWESOME",
    "WE HAVE BEEN HERE BEFORE",
    "NO THOUGHTS, HEAD EMPTY",
)

_STYLES: Final[tuple[str, ...]] = ("poster", "labels", "post", "shadow")


def draw_scene(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A drawn landscape: sky gradient, sun, layered hills, trees, slight blur and grain."""
    width, height = size
    sky_top = hsv(rng.uniform(0.5, 0.7), rng.uniform(0.3, 0.8), rng.uniform(0.6, 1.0))
    sky_low = hsv(rng.uniform(0.0, 0.15), rng.uniform(0.1, 0.5), rng.uniform(0.8, 1.0))
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    sky = np.array(sky_top, np.float32) * (1 - t) + np.array(sky_low, np.float32) * t
    img = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    r = round(min(size) * rng.uniform(0.05, 0.12))
    sx, sy = rng.randrange(r, width - r), rng.randrange(r, height // 2)
    draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(255, 240, 200))
    for layer in range(rng.randrange(2, 5)):
        base = height * (0.45 + 0.13 * layer + rng.uniform(-0.05, 0.05))
        amp = height * rng.uniform(0.03, 0.12)
        freq = rng.uniform(1.0, 4.0)
        phase = rng.uniform(0, 6.3)
        xs = np.linspace(0, width, 40)
        ys = base - amp * np.sin(freq * xs / width * 6.28 + phase)
        shade = hsv(rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.7), 0.75 - 0.15 * layer)
        draw.polygon(
            [(0, height), *zip(xs.tolist(), ys.tolist(), strict=True), (width, height)],
            fill=shade,
        )
    for _ in range(rng.randrange(3, 9)):
        tx = rng.randrange(0, width)
        ty = rng.randrange(height // 2, height)
        th = round(height * rng.uniform(0.08, 0.25))
        tw = th // 2
        draw.rectangle((tx - tw // 8, ty - th // 4, tx + tw // 8, ty), fill=(90, 60, 30))
        draw.polygon(
            [(tx, ty - th), (tx - tw // 2, ty - th // 4), (tx + tw // 2, ty - th // 4)],
            fill=hsv(rng.uniform(0.25, 0.4), 0.7, rng.uniform(0.3, 0.6)),
        )
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    arr = np.asarray(img, dtype=np.float32)
    arr += np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(1, 5), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _choice(template: int) -> tuple[random.Random, str]:
    rng = random.Random(f"heldout:{template}")
    return rng, _STYLES[template % len(_STYLES)]


def heldout_layout(template: int) -> Layout:
    """The caption slots of ``template``."""
    _, style = _choice(template)
    if style == "poster":
        return Layout((HELDOUT_EN, HELDOUT_SUB))
    if style == "labels":
        return Layout((HELDOUT_LABELS, HELDOUT_LABELS, HELDOUT_LABELS))
    if style == "post":
        return Layout((HELDOUT_POSTS,))
    return Layout((HELDOUT_MIDDLE,))


def heldout_draw(template: int, captions: tuple[str, ...]) -> Image.Image:
    """Draw ``template`` with ``captions``."""
    rng, style = _choice(template)
    if style == "poster":
        w, h = rng.choice(((700, 600), (640, 560), (600, 620)))
        img = Image.new("RGB", (w, h), (0, 0, 0))
        margin = round(w * 0.08)
        ph = round(h * 0.64)
        img.paste(draw_scene(rng, (w - 2 * margin, ph)), (margin, margin))
        ImageDraw.Draw(img).rectangle(
            (margin - 4, margin - 4, w - margin + 3, margin + ph + 3),
            outline=(255, 255, 255),
            width=2,
        )
        top = margin + ph + round(h * 0.03)
        title = round(h * 0.085)
        draw_text(
            img,
            captions[0].upper(),
            (margin, top, w - margin, top + round(title * 1.3)),
            style="serif",
            size=title,
            stroke=None,
            max_lines=1,
        )
        sub = round(h * 0.035)
        draw_text(
            img,
            captions[1],
            (margin, top + round(title * 1.35), w - margin, h - round(h * 0.02)),
            style="sans",
            size=sub,
            fill=(220, 220, 220),
            stroke=None,
            valign="top",
            max_lines=2,
            min_size=10,
        )
        return img
    if style == "labels":
        size = rng.choice(((640, 480), (600, 600), (720, 540)))
        img = draw_scene(rng, size)
        w, h = size
        lsize = round(h * rng.uniform(0.055, 0.07))
        fstyle = rng.choice(("sans_bold", "condensed_bold"))
        spots = [(0.08, 0.15), (0.55, 0.3), (0.2, 0.62), (0.6, 0.72)]
        rng.shuffle(spots)
        for (fx, fy), text in zip(spots, captions, strict=False):
            x0 = round(w * (fx + rng.uniform(-0.04, 0.04)))
            y0 = round(h * (fy + rng.uniform(-0.04, 0.04)))
            draw_text(
                img,
                text,
                (x0, y0, x0 + round(w * 0.36), y0 + round(lsize * 1.4)),
                style=fstyle,
                size=lsize,
                align="left",
                max_lines=1,
            )
        return img
    if style == "post":
        w = rng.choice((560, 600, 640))
        pad = round(w * 0.05)
        text_h = round(w * 0.2)
        ph = round((w - 2 * pad) * rng.uniform(0.55, 0.8))
        header = round(w * 0.12)
        h = pad + header + text_h + ph + 2 * pad
        dark = rng.random() < 0.3
        bg, ink = ((21, 32, 43), (235, 235, 235)) if dark else ((255, 255, 255), (15, 20, 25))
        img = Image.new("RGB", (w, h), bg)
        draw = ImageDraw.Draw(img)
        av = round(header * 0.8)
        draw.ellipse((pad, pad, pad + av, pad + av), fill=hsv(rng.random(), 0.6, 0.8))
        name_size = round(header * 0.32)
        name = rng.choice(("Dana Whitfield", "kevin", "月亮不睡我不睡", "meme archive"))
        draw_text(
            img,
            name,
            (pad + av + pad // 2, pad, w - pad, pad + av // 2),
            style="sans_bold",
            size=name_size,
            fill=ink,
            stroke=None,
            align="left",
            max_lines=1,
        )
        draw_text(
            img,
            "@" + rng.choice(("dana_w", "kev1n", "moonlight", "archive")),
            (pad + av + pad // 2, pad + av // 2, w - pad, pad + av),
            style="sans",
            size=round(name_size * 0.9),
            fill=(120, 130, 140),
            stroke=None,
            align="left",
            max_lines=1,
        )
        top = pad + header
        draw_text(
            img,
            captions[0],
            (pad, top, w - pad, top + text_h),
            style="sans",
            size=round(w * 0.045),
            fill=ink,
            stroke=None,
            align="left",
            valign="top",
            max_lines=3,
        )
        picture = draw_scene(rng, (w - 2 * pad, ph))
        mask = Image.new("L", picture.size, 0)
        ImageDraw.Draw(mask).rounded_rectangle((0, 0, *picture.size), radius=pad, fill=255)
        img.paste(picture, (pad, top + text_h + pad // 2), mask)
        return img
    # shadow
    size = rng.choice(((600, 600), (720, 480), (520, 640)))
    img = draw_scene(rng, size)
    w, h = size
    cy = round(h * rng.uniform(0.4, 0.6))
    fsize = round(h * rng.uniform(0.07, 0.09))
    draw_text(
        img,
        captions[0],
        (round(0.06 * w), cy - fsize * 2, round(0.94 * w), cy + fsize * 2),
        style=rng.choice(("sans_bold", "serif_bold")),
        size=fsize,
        stroke=None,
        shadow=True,
        max_lines=2,
    )
    return img

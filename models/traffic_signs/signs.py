"""Canonical drawings of the 43 GTSRB sign classes, rendered once as RGBA templates.

Each sign is drawn with Pillow on a square canvas in its real shape and colours (red-bordered
circles with the speed numbers, warning triangles with simplified pictograms, blue mandatory
circles with arrows, ...). `data.py` warps, composites and degrades these templates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 64
"""Side of a template canvas in pixels."""

C = SIZE / 2
RED = (200, 16, 30)
WHITE = (245, 245, 240)
BLACK = (20, 20, 20)
BLUE = (20, 70, 170)
YELLOW = (250, 195, 0)
GREY = (150, 150, 150)

Draw = ImageDraw.ImageDraw


def _circle(d: Draw, r: float, fill: tuple[int, int, int]) -> None:
    d.ellipse((C - r, C - r, C + r, C + r), fill=fill)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text(d: Draw, text: str, size: int, fill: tuple[int, int, int], dy: float = 0) -> None:
    font = _font(size)
    left, top, right, bottom = d.textbbox((0, 0), text, font=font, stroke_width=1)
    x = C - (left + right) / 2
    y = C - (top + bottom) / 2 + dy
    d.text((x, y), text, font=font, fill=fill, stroke_width=1, stroke_fill=fill)


def _prohibition(d: Draw) -> None:
    """White disc with a thick red ring."""
    _circle(d, 30, RED)
    _circle(d, 22, WHITE)


def _end_sign(d: Draw, stripes: int = 5) -> None:
    """White disc with a thin grey ring and diagonal black stripes (end of a restriction)."""
    _circle(d, 30, GREY)
    _circle(d, 28, WHITE)
    for i in range(stripes):
        off = (i - (stripes - 1) / 2) * 2.2
        d.line((C - 19 + off, C + 19 + off, C + 19 + off, C - 19 + off), fill=BLACK, width=1)


def _warning(d: Draw) -> None:
    """Upward white triangle with a thick red border."""
    d.polygon([(C, 3), (61, 58), (3, 58)], fill=RED)
    d.polygon([(C, 15), (52, 52), (12, 52)], fill=WHITE)


def _mandatory(d: Draw) -> None:
    """Blue disc with a thin white rim."""
    _circle(d, 30, WHITE)
    _circle(d, 28, BLUE)


def _car(d: Draw, x: float, y: float, fill: tuple[int, int, int]) -> None:
    d.rounded_rectangle((x - 5, y - 8, x + 5, y + 8), radius=3, fill=fill)


def _truck(d: Draw, x: float, y: float, fill: tuple[int, int, int]) -> None:
    d.rectangle((x - 6, y - 10, x + 6, y + 6), fill=fill)
    d.rectangle((x - 4, y + 6, x + 4, y + 10), fill=fill)


def _arrow(d: Draw, angle_deg: float, length: float = 19, cx: float = C, cy: float = C) -> None:
    """White arrow from the centre pointing at `angle_deg` (0 = up, clockwise)."""
    a = math.radians(angle_deg)
    ux, uy = math.sin(a), -math.cos(a)
    tip = (cx + ux * length, cy + uy * length)
    base = (cx - ux * length * 0.6, cy - uy * length * 0.6)
    d.line((base, tip), fill=WHITE, width=6)
    px, py = -uy, ux
    head = length * 0.45
    back = (tip[0] - ux * head, tip[1] - uy * head)
    d.polygon(
        [
            (tip[0] + ux * 3, tip[1] + uy * 3),
            (back[0] + px * 8, back[1] + py * 8),
            (back[0] - px * 8, back[1] - py * 8),
        ],
        fill=WHITE,
    )


def _bent_arrow(d: Draw, turn: int) -> None:
    """Arrow going up then turning right (turn=1) or left (turn=-1)."""
    d.line((C, C + 18, C, C - 2), fill=WHITE, width=6)
    d.line((C, C - 2, C + turn * 10, C - 2), fill=WHITE, width=6)
    tx = C + turn * 20
    d.polygon([(tx, C - 2), (tx - turn * 10, C - 11), (tx - turn * 10, C + 7)], fill=WHITE)


def _speed(limit: int) -> Callable[[Draw], None]:
    def draw(d: Draw) -> None:
        _prohibition(d)
        _text(d, str(limit), 27 if limit < 100 else 21, BLACK)

    return draw


def _end_speed_80(d: Draw) -> None:
    _circle(d, 30, GREY)
    _circle(d, 28, WHITE)
    _text(d, "80", 27, GREY)
    for off in (-3, 0, 3):
        d.line((C - 20 + off, C + 20 + off, C + 20 + off, C - 20 + off), fill=BLACK, width=2)


def _no_passing(trucks: bool, end: bool = False) -> Callable[[Draw], None]:
    def draw(d: Draw) -> None:
        if end:
            _circle(d, 30, GREY)
            _circle(d, 28, WHITE)
            left_colour = GREY
        else:
            _prohibition(d)
            left_colour = BLACK
        if trucks:
            _truck(d, C - 8, C, left_colour)
        else:
            _car(d, C - 8, C, left_colour)
        _car(d, C + 8, C, GREY if end else RED)
        if end:
            for off in (-3, 0, 3):
                d.line((C - 20 + off, C + 20 + off, C + 20 + off, C - 20 + off), fill=BLACK, width=1)

    return draw


def _right_of_way(d: Draw) -> None:
    _warning(d)
    d.line((C, 24, C, 49), fill=BLACK, width=4)
    d.line((C - 11, 38, C + 11, 38), fill=BLACK, width=4)


def _priority_road(d: Draw) -> None:
    d.polygon([(C, 1), (63, C), (C, 63), (1, C)], fill=WHITE)
    d.polygon([(C, 12), (52, C), (C, 52), (12, C)], fill=YELLOW)


def _yield(d: Draw) -> None:
    d.polygon([(3, 6), (61, 6), (C, 61)], fill=RED)
    d.polygon([(14, 12), (50, 12), (C, 48)], fill=WHITE)


def _stop(d: Draw) -> None:
    points = [
        (C + 31 * math.cos(math.radians(22.5 + 45 * k)), C + 31 * math.sin(math.radians(22.5 + 45 * k)))
        for k in range(8)
    ]
    d.polygon(points, fill=RED)
    _text(d, "STOP", 17, WHITE)


def _no_vehicles(d: Draw) -> None:
    _prohibition(d)


def _no_trucks(d: Draw) -> None:
    _prohibition(d)
    _truck(d, C, C, BLACK)


def _no_entry(d: Draw) -> None:
    _circle(d, 30, RED)
    d.rectangle((C - 19, C - 5, C + 19, C + 5), fill=WHITE)


def _general_caution(d: Draw) -> None:
    _warning(d)
    d.rectangle((C - 2.5, 25, C + 2.5, 41), fill=BLACK)
    d.ellipse((C - 3, 44, C + 3, 50), fill=BLACK)


def _curve(direction: int) -> Callable[[Draw], None]:
    def draw(d: Draw) -> None:
        _warning(d)
        d.line((C - direction * 6, 50, C - direction * 6, 38), fill=BLACK, width=4)
        d.line((C - direction * 6, 38, C + direction * 2, 28), fill=BLACK, width=4)
        tip = (C - direction * 6, 22)
        d.polygon([tip, (tip[0] + direction * 14, 27), (tip[0] + direction * 8, 34)], fill=BLACK)

    return draw


def _double_curve(d: Draw) -> None:
    _warning(d)
    d.line([(C - 4, 51), (C - 4, 44), (C + 5, 37), (C - 4, 30), (C - 4, 24)], fill=BLACK, width=4, joint="curve")
    d.polygon([(C - 4, 20), (C - 10, 27), (C + 2, 27)], fill=BLACK)


def _bumpy(d: Draw) -> None:
    _warning(d)
    d.rectangle((15, 46, 49, 50), fill=BLACK)
    d.pieslice((17, 38, 31, 54), 180, 360, fill=BLACK)
    d.pieslice((33, 38, 47, 54), 180, 360, fill=BLACK)


def _slippery(d: Draw) -> None:
    _warning(d)
    _car(d, C, 33, BLACK)
    d.line([(C - 9, 50), (C - 3, 44), (C + 3, 50), (C + 9, 44)], fill=BLACK, width=2)
    d.line([(C - 11, 44), (C - 5, 50)], fill=BLACK, width=2)


def _narrows(d: Draw) -> None:
    _warning(d)
    d.line((C - 7, 26, C - 7, 50), fill=BLACK, width=4)
    d.line([(C + 7, 50), (C + 7, 40), (C + 2, 32), (C + 2, 26)], fill=BLACK, width=4)


def _road_work(d: Draw) -> None:
    _warning(d)
    d.ellipse((C - 3, 24, C + 3, 30), fill=BLACK)
    d.line((C, 30, C - 4, 42), fill=BLACK, width=3)
    d.line((C - 4, 42, C - 9, 50), fill=BLACK, width=3)
    d.line((C - 4, 42, C + 1, 50), fill=BLACK, width=3)
    d.line((C - 1, 34, C + 10, 44), fill=BLACK, width=2)
    d.polygon([(C + 6, 50), (C + 14, 50), (C + 10, 44)], fill=BLACK)


def _signals(d: Draw) -> None:
    _warning(d)
    d.rectangle((C - 5, 23, C + 5, 51), fill=BLACK)
    for y, colour in ((28, RED), (37, YELLOW), (46, (20, 160, 60))):
        d.ellipse((C - 3, y - 3, C + 3, y + 3), fill=colour)


def _person(d: Draw, x: float, y: float, scale: float) -> None:
    d.ellipse((x - 3 * scale, y - 13 * scale, x + 3 * scale, y - 7 * scale), fill=BLACK)
    d.line((x, y - 7 * scale, x, y + 4 * scale), fill=BLACK, width=max(2, round(3 * scale)))
    d.line((x, y + 4 * scale, x - 5 * scale, y + 12 * scale), fill=BLACK, width=2)
    d.line((x, y + 4 * scale, x + 5 * scale, y + 12 * scale), fill=BLACK, width=2)
    d.line((x - 5 * scale, y - 3 * scale, x + 5 * scale, y - 3 * scale), fill=BLACK, width=2)


def _pedestrians(d: Draw) -> None:
    _warning(d)
    _person(d, C, 38, 1.0)


def _children(d: Draw) -> None:
    _warning(d)
    _person(d, C - 6, 38, 1.0)
    _person(d, C + 7, 42, 0.7)


def _bicycles(d: Draw) -> None:
    _warning(d)
    d.ellipse((C - 14, 40, C - 4, 50), outline=BLACK, width=2)
    d.ellipse((C + 4, 40, C + 14, 50), outline=BLACK, width=2)
    d.line([(C - 9, 45), (C - 1, 35), (C + 9, 45)], fill=BLACK, width=2)
    d.ellipse((C - 3, 26, C + 3, 32), fill=BLACK)


def _snow(d: Draw) -> None:
    _warning(d)
    for angle in (0, 60, 120):
        a = math.radians(angle)
        dx, dy = 11 * math.sin(a), 11 * math.cos(a)
        d.line((C - dx, 39 - dy, C + dx, 39 + dy), fill=BLACK, width=3)


def _animals(d: Draw) -> None:
    _warning(d)
    d.polygon([(C - 12, 40), (C + 6, 38), (C + 10, 30), (C + 14, 33), (C + 9, 42), (C - 10, 45)], fill=BLACK)
    for x in (C - 10, C - 6, C + 3, C + 7):
        d.line((x, 43, x, 51), fill=BLACK, width=2)
    d.line((C + 11, 31, C + 8, 24), fill=BLACK, width=2)
    d.line((C + 12, 31, C + 16, 25), fill=BLACK, width=2)


def _end_all(d: Draw) -> None:
    _end_sign(d, stripes=6)


def _turn(direction: int) -> Callable[[Draw], None]:
    def draw(d: Draw) -> None:
        _mandatory(d)
        d.line((C - direction * 8, C + 18, C - direction * 8, C), fill=WHITE, width=6)
        d.arc((C - direction * 8 - 8, C - 8, C - direction * 8 + 8, C + 8), 180, 270, fill=WHITE, width=6)
        d.line((C - direction * 8, C - 5, C + direction * 8, C - 5), fill=WHITE, width=6)
        tip = C + direction * 19
        d.polygon([(tip, C - 5), (tip - direction * 10, C - 14), (tip - direction * 10, C + 4)], fill=WHITE)

    return draw


def _straight_or(direction: int) -> Callable[[Draw], None]:
    def draw(d: Draw) -> None:
        _mandatory(d)
        _arrow(d, 0, length=18, cx=C - direction * 4)
        _arrow(d, direction * 70, length=14, cx=C - direction * 4, cy=C + 8)

    return draw


def _keep(direction: int) -> Callable[[Draw], None]:
    def draw(d: Draw) -> None:
        _mandatory(d)
        _arrow(d, 180 - direction * 45, length=18)

    return draw


def _ahead_only(d: Draw) -> None:
    _mandatory(d)
    _arrow(d, 0)


def _roundabout(d: Draw) -> None:
    _mandatory(d)
    for k in range(3):
        angle = 120 * k
        d.arc((C - 11, C - 11, C + 11, C + 11), angle - 90 + 10, angle - 90 + 85, fill=WHITE, width=5)
        b = math.radians(angle + 95)
        tip = (C + 11 * math.sin(b), C - 11 * math.cos(b))
        ux, uy = math.cos(b), math.sin(b)
        d.polygon(
            [
                (tip[0] + ux * 6, tip[1] + uy * 6),
                (tip[0] - uy * 6 - ux * 2, tip[1] + ux * 6 - uy * 2),
                (tip[0] + uy * 6 - ux * 2, tip[1] - ux * 6 - uy * 2),
            ],
            fill=WHITE,
        )


DRAWERS: tuple[Callable[[Draw], None], ...] = (
    _speed(20),
    _speed(30),
    _speed(50),
    _speed(60),
    _speed(70),
    _speed(80),
    _end_speed_80,
    _speed(100),
    _speed(120),
    _no_passing(trucks=False),
    _no_passing(trucks=True),
    _right_of_way,
    _priority_road,
    _yield,
    _stop,
    _no_vehicles,
    _no_trucks,
    _no_entry,
    _general_caution,
    _curve(-1),
    _curve(1),
    _double_curve,
    _bumpy,
    _slippery,
    _narrows,
    _road_work,
    _signals,
    _pedestrians,
    _children,
    _bicycles,
    _snow,
    _animals,
    _end_all,
    _turn(1),
    _turn(-1),
    _ahead_only,
    _straight_or(1),
    _straight_or(-1),
    _keep(1),
    _keep(-1),
    _roundabout,
    _no_passing(trucks=False, end=True),
    _no_passing(trucks=True, end=True),
)
NUM_CLASSES = len(DRAWERS)


@cache
def templates() -> np.ndarray:
    """All class templates as float32 RGBA, shape (43, SIZE, SIZE, 4), values in [0, 1].

    Pillow draws without anti-aliasing, so each template is smoothed with a 3x3 binomial filter.
    """
    out = np.empty((NUM_CLASSES, SIZE, SIZE, 4), np.float32)
    for k, draw in enumerate(DRAWERS):
        image = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
        draw(ImageDraw.Draw(image))
        rgba = np.asarray(image, np.float32) / 255.0
        rgba[..., :3] *= rgba[..., 3:]  # premultiplied alpha, so smoothing does not bleed black
        padded = np.pad(rgba, ((1, 1), (1, 1), (0, 0)))
        smooth = sum(
            w * padded[1 + dy : 1 + dy + SIZE, 1 + dx : 1 + dx + SIZE]
            for dy, wy in ((-1, 0.25), (0, 0.5), (1, 0.25))
            for dx, wx in ((-1, 0.25), (0, 0.5), (1, 0.25))
            for w in (wy * wx,)
        )
        out[k] = smooth
    return out

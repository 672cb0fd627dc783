"""Product and banner images for the demo shop, drawn as SVG by code (nothing downloaded).

A product's picture is a simple silhouette of what it is (a shoe, a boot, a racket, a
jacket...) in the product's colour over a soft background of its category's hue; a
banner is a wide gradient with a large silhouette. Every value placed in the markup is a
number or one of this module's own shapes: nothing of a request reaches the SVG text.
"""

from __future__ import annotations

from intently.web.demo.catalog import BY_ID, Category

# Silhouettes on a 200 x 200 grid, as SVG path data (this module's own drawings).
SHAPES: dict[str, str] = {
    "shoe": "M20 130 C20 110 40 100 60 98 L95 70 C105 62 118 64 124 74 L140 100 "
    "C160 104 182 112 186 128 L186 142 C186 148 181 152 175 152 L28 152 C23 152 20 148 "
    "20 142 Z",
    "boot": "M50 40 L110 40 L114 104 C140 108 170 116 178 132 L178 150 C178 155 174 158 "
    "169 158 L48 158 C43 158 40 155 40 150 L40 120 C40 100 46 70 50 40 Z",
    "racket": "M100 20 C140 20 160 50 160 85 C160 120 135 140 108 142 L106 185 L94 185 "
    "L92 142 C65 140 40 120 40 85 C40 50 60 20 100 20 Z",
    "bag": "M40 70 L160 70 L170 160 L30 160 Z M75 70 C75 40 125 40 125 70 L115 70 "
    "C115 52 85 52 85 70 Z",
    "mat": "M30 80 L150 80 C172 80 180 95 180 110 C180 125 172 140 150 140 L30 140 Z "
    "M150 92 C160 92 166 100 166 110 C166 120 160 128 150 128 C140 128 134 120 134 110 "
    "C134 100 140 92 150 92 Z",
    "block": "M50 60 L150 40 L170 120 L70 150 Z",
    "shirt": "M70 30 L130 30 L175 60 L158 92 L140 82 L140 170 L60 170 L60 82 L42 92 L25 60 Z",
    "jacket": "M68 28 L132 28 L178 62 L170 150 L146 150 L142 84 L140 176 L104 176 L100 40 "
    "L96 176 L60 176 L58 84 L54 150 L30 150 L22 62 Z",
    "legs": "M60 25 L140 25 L150 180 L115 180 L100 80 L85 180 L50 180 Z",
    "helmet": "M25 130 C25 70 65 40 110 40 C150 40 180 70 180 120 L180 130 C150 126 120 "
    "132 100 140 L40 140 C30 140 25 136 25 130 Z",
    "goggles": "M20 100 C20 80 40 70 60 70 C80 70 92 84 100 92 C108 84 120 70 140 70 "
    "C160 70 180 80 180 100 C180 120 160 130 140 130 C120 130 108 116 100 108 C92 116 80 "
    "130 60 130 C40 130 20 120 20 100 Z",
    "cap": "M30 130 C30 70 65 40 100 40 C135 40 170 70 170 130 Z",
    "light": "M70 40 L130 40 L130 150 L70 150 Z M85 160 L115 160 L115 180 L85 180 Z",
    "box": "M40 60 L160 60 L160 160 L40 160 Z",
}
NOUN_SHAPES = {
    "Running Shoe": "shoe", "Trail Shoe": "shoe", "Court Shoe": "shoe",
    "Hiking Boot": "boot", "Backpacking Boot": "boot",
    "Racket": "racket", "Tennis Bag": "bag", "Overgrip Pack": "box",
    "Yoga Mat": "mat", "Yoga Block": "block", "Leggings": "legs", "Strap": "mat",
    "Helmet": "helmet", "Jersey": "shirt", "Cycling Gloves": "box", "Bike Light": "light",
    "Bib Shorts": "legs",
    "Rain Jacket": "jacket", "Down Jacket": "jacket", "Softshell": "jacket", "Fleece": "jacket",
    "Swimsuit": "shirt", "Goggles": "goggles", "Swim Cap": "cap", "Jammer": "legs",
}  # fmt: skip
BANNER_SHAPES = {
    "running": "shoe", "trail": "shoe", "hiking": "boot", "tennis": "racket", "yoga": "mat",
    "cycling": "helmet", "jackets": "jacket", "swimwear": "goggles",
}  # fmt: skip
GENERIC_BANNERS = {"season": (165, "jacket"), "members": (330, "bag")}


def shape_of(title: str) -> str:
    for noun, shape in NOUN_SHAPES.items():
        if title.endswith(noun):
            return shape
    return "box"


def product_svg(category: Category, title: str, hue: int, seed: int) -> str:
    """A 400 x 400 picture of a product: its silhouette in its colour."""
    shape = SHAPES[shape_of(title)]
    back = category.hue
    tilt = (seed % 11) - 5
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 400 400" role="img">'
        '<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">'
        f'<stop offset="0" stop-color="hsl({back},60%,94%)"/>'
        f'<stop offset="1" stop-color="hsl({back},45%,84%)"/></linearGradient></defs>'
        '<rect width="400" height="400" fill="url(#g)"/>'
        f'<circle cx="{300 - seed % 60}" cy="{90 + seed % 50}" r="70" '
        f'fill="hsl({back},55%,90%)"/>'
        '<ellipse cx="200" cy="330" rx="130" ry="16" fill="rgba(0,0,0,.08)"/>'
        f'<g transform="translate(40 40) scale(1.6) rotate({tilt} 100 100)">'
        f'<path d="{shape}" fill="hsl({hue},70%,52%)" stroke="hsl({hue},60%,30%)" '
        'stroke-width="3" stroke-linejoin="round" fill-rule="evenodd"/>'
        f'<path d="M40 150 L170 150" stroke="hsl({hue},50%,92%)" stroke-width="5" '
        'stroke-linecap="round" opacity=".7"/></g></svg>'
    )


def banner_svg(name: str) -> str | None:
    """A 1200 x 400 banner for a category id, or for a generic banner's name."""
    category = BY_ID.get(name)
    if category is not None:
        hue, shape = category.hue, BANNER_SHAPES[category.id]
    elif name in GENERIC_BANNERS:
        hue, shape = GENERIC_BANNERS[name]
    else:
        return None
    path = SHAPES[shape]
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1200 400" '
        'preserveAspectRatio="xMidYMid slice" role="img">'
        '<defs><linearGradient id="b" x1="0" y1="0" x2="1" y2="0">'
        f'<stop offset="0" stop-color="hsl({hue},70%,30%)"/>'
        f'<stop offset="1" stop-color="hsl({(hue + 40) % 360},75%,55%)"/></linearGradient>'
        '</defs><rect width="1200" height="400" fill="url(#b)"/>'
        f'<circle cx="930" cy="120" r="220" fill="hsl({hue},80%,70%)" opacity=".25"/>'
        f'<circle cx="1120" cy="360" r="140" fill="hsl({hue},80%,85%)" opacity=".2"/>'
        '<g transform="translate(720 20) scale(1.8) rotate(-8 100 100)">'
        f'<path d="{path}" fill="hsl({hue},85%,92%)" stroke="hsl({hue},60%,25%)" '
        'stroke-width="3" stroke-linejoin="round" fill-rule="evenodd"/></g></svg>'
    )

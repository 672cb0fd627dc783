"""The demo shop's catalog and offers, made by code from a fixed seed.

About 200 products in eight categories (25 each), with brands, prices, tags, a colour
and a rating; every run makes the same ones (random.Random(SEED)), so product ids and
titles are stable across restarts and the seeded history always names existing items.
Images are drawn by web/demo/images.py from the product's category and colour.

Category ids are what sessions hold as a product's category (the `category` of the
"Product Viewed" events the pages send), so they are short and stable: `running`,
`trail`, ...; each item's category path is [department, category id].
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from intently.catalog.items import Item
from intently.catalog.offers import Offer

SEED = 2026
PER_CATEGORY = 25


@dataclass(frozen=True)
class Category:
    id: str
    name: str  # shown in the shop
    department: str
    brands: tuple[str, ...]
    price: tuple[int, int]  # range, in dollars
    nouns: tuple[str, ...]  # what the products are
    models: tuple[str, ...]
    tags: tuple[str, ...]
    banner: str  # the hero banner's headline
    banner_text: str
    hue: int  # the category's colour on images and banners (HSL hue)


CATEGORIES: tuple[Category, ...] = (
    Category("running", "Running shoes", "footwear", ("Stride", "Aerofoot", "Pacer", "Kinetix"),
             (79, 189), ("Running Shoe",),
             ("Velocity", "Tempo", "Cloudrun", "Sprint", "Marathon", "Glide", "Pulse", "Zephyr"),
             ("road", "cushioned", "lightweight", "racing", "daily trainer", "neutral",
              "stability"),
             "New season running shoes", "Light, fast and cushioned: this season's road shoes.",
             8),
    Category("trail", "Trail shoes", "footwear", ("Ridgeline", "Stride", "Summit Co"),
             (99, 199), ("Trail Shoe",),
             ("Rockhop", "Mudline", "Switchback", "Canyon", "Scree", "Ridge"),
             ("trail", "grip", "waterproof", "rock plate", "mountain"),
             "Trail shoes that grip", "Lugged soles and rock plates for the rough stuff.", 28),
    Category("hiking", "Hiking boots", "footwear", ("Summit Co", "Ridgeline", "Alpenweg"),
             (119, 279), ("Hiking Boot", "Backpacking Boot"),
             ("Trekker", "Highland", "Traverse", "Basecamp", "Pathfinder", "Cairn"),
             ("hiking", "waterproof", "leather", "ankle support", "mountain"),
             "Boots for every trail", "Waterproof, broken in from day one.", 140),
    Category("tennis", "Tennis", "racket sports", ("Baseline", "Acecraft", "Netpoint"),
             (19, 259), ("Racket", "Court Shoe", "Tennis Bag", "Overgrip Pack"),
             ("Pro Staff", "Rally", "Volley", "Topspin", "Slice", "Deuce"),
             ("tennis", "court", "control", "power", "clay", "hard court"),
             "Serve in style", "Rackets, court shoes and bags for your best season.", 75),
    Category("yoga", "Yoga", "fitness", ("Lotusform", "Calmcore", "Asana Lab"),
             (19, 129), ("Yoga Mat", "Yoga Block", "Leggings", "Strap"),
             ("Balance", "Flow", "Breathe", "Align", "Still", "Lotus"),
             ("yoga", "non-slip", "eco", "stretch", "studio"),
             "Find your flow", "Mats, blocks and layers made for long sessions.", 280),
    Category("cycling", "Cycling", "bike", ("Veloce", "Chainline", "Gravelo"),
             (25, 229), ("Helmet", "Jersey", "Cycling Gloves", "Bike Light", "Bib Shorts"),
             ("Aero", "Climber", "Gran Fondo", "Peloton", "Criterium", "Gravel"),
             ("cycling", "road", "gravel", "aero", "breathable", "reflective"),
             "Ride further", "Helmets, jerseys and lights for long rides.", 200),
    Category("jackets", "Outdoor jackets", "apparel", ("Northwind", "Alpenweg", "Summit Co"),
             (89, 349), ("Rain Jacket", "Down Jacket", "Softshell", "Fleece"),
             ("Storm", "Glacier", "Fjord", "Tundra", "Squall", "Drift"),
             ("waterproof", "insulated", "windproof", "packable", "hiking", "winter"),
             "Weatherproof jackets", "Shells and down for whatever the sky does.", 215),
    Category("swimwear", "Swimwear", "water", ("Tidewater", "Finline", "Aquafold"),
             (15, 119), ("Swimsuit", "Goggles", "Swim Cap", "Jammer"),
             ("Lap", "Open Water", "Riptide", "Lagoon", "Current", "Wave"),
             ("swim", "chlorine resistant", "anti-fog", "training", "pool", "open water"),
             "Into the water", "Suits and goggles for pool and open water.", 185),
)  # fmt: skip
BY_ID = {category.id: category for category in CATEGORIES}
COLOURS = (
    ("Coral", 8), ("Sky", 200), ("Lime", 95), ("Slate", 215), ("Sunset", 30),
    ("Ocean", 190), ("Plum", 290), ("Forest", 140), ("Sand", 40), ("Ruby", 350),
)  # fmt: skip


def products() -> list[Item]:
    """The shop's products, the same on every run."""
    rng = random.Random(SEED)
    found: list[Item] = []
    for category in CATEGORIES:
        seen: set[str] = set()
        for number in range(1, PER_CATEGORY + 1):
            while True:
                brand = rng.choice(category.brands)
                model = rng.choice(category.models)
                noun = rng.choice(category.nouns)
                suffix = rng.choice(("", " 2", " 3", " Pro", " Lite", " GTX", " Plus"))
                title = f"{brand} {model}{suffix} {noun}"
                if title not in seen:
                    seen.add(title)
                    break
            colour, hue = rng.choice(COLOURS)
            low, high = category.price
            price = float(rng.randrange(low, high + 1, 5)) - 0.01
            tags = sorted(rng.sample(category.tags, k=min(3, len(category.tags))))
            item_id = f"{category.id}-{number:02d}"
            found.append(
                Item(
                    id=item_id,
                    title=title,
                    category=[category.department, category.id],
                    brand=brand,
                    price=round(price, 2),
                    stock=rng.choice((None, 5, 12, 40)),
                    tags=tags,
                    image=f"/demo/img/p/{item_id}.svg",
                    url=f"/demo/p/{item_id}",
                    attributes={
                        "colour": colour,
                        "hue": hue,
                        "rating": round(rng.uniform(3.6, 4.9), 1),
                        "description": _description(rng, category, noun, colour, tags),
                    },
                )
            )
    return found


def _description(
    rng: random.Random, category: Category, noun: str, colour: str, tags: list[str]
) -> str:
    openers = ("Built for", "Made for", "Designed for", "Ready for")
    uses = {
        "running": "daily miles and race day", "trail": "muddy climbs and rocky descents",
        "hiking": "long days on the trail", "tennis": "baseline rallies and quick volleys",
        "yoga": "long holds and flowing sessions", "cycling": "long rides in any weather",
        "jackets": "wind, rain and cold", "swimwear": "pool laps and open water",
    }  # fmt: skip
    return (
        f"{rng.choice(openers)} {uses[category.id]}: a {colour.lower()} {noun.lower()} "
        f"that is {', '.join(tags)}."
    )


def offers() -> list[Offer]:
    """Hero banners (one per category, for visitors interested in it, and two for
    everyone), exit-intent offers, and offers for the order confirmation page."""
    found = [
        Offer(
            id=f"hero-{category.id}",
            kind="banner",
            title=category.banner,
            fields={
                "text": category.banner_text,
                "cta": f"Shop {category.name.lower()}",
                "url": f"/demo/c/{category.id}",
                "image": f"/demo/img/hero/{category.id}.svg",
                "category": category.id,
            },
            eligibility=f'"{category.id}" in session.top_categories',
        )
        for category in CATEGORIES
    ]
    found += [
        Offer(
            id="hero-season", kind="banner", title="Gear up for the season",
            fields={"text": "Shoes, jackets and kit for every sport, shipped free over $100.",
                    "cta": "Browse the shop", "url": "/demo/search?q=waterproof",
                    "image": "/demo/img/hero/season.svg"},
        ),
        Offer(
            id="hero-members", kind="banner", title="Members get 10% off",
            fields={"text": "Join free: early access to new arrivals and member prices.",
                    "cta": "See what's new", "url": "/demo/search?q=pro",
                    "image": "/demo/img/hero/members.svg"},
        ),
        Offer(
            id="exit-cart-10", kind="discount", title="Wait! 10% off your cart",
            fields={"text": "Complete your order in the next 30 minutes and save 10%.",
                    "code": "STAY10", "cta": "Back to my cart", "url": "/demo/cart"},
            eligibility="session.cart.count > 0",
        ),
        Offer(
            id="exit-free-shipping", kind="discount", title="Free shipping on this order",
            fields={"text": "Your cart is over $100: shipping is on us today.",
                    "code": "SHIPFREE", "cta": "Check out now", "url": "/demo/checkout"},
            eligibility="session.cart.value >= 100",
        ),
        Offer(
            id="exit-help", kind="message", title="Not sure which one?",
            fields={"text": "Our staff run, hike and ride: ask us anything, we answer fast."},
        ),
        Offer(
            id="confirm-referral", kind="cta", title="Give $15, get $15",
            fields={"text": "Share your link: friends get $15 off their first order, you "
                    "get $15 when they order.", "cta": "Invite friends",
                    "url": "/demo/?ref=friend"},
        ),
        Offer(
            id="confirm-complete-look", kind="cta", title="Complete the look: 15% off",
            fields={"text": "Socks, bottles and bags that go with your order: 15% off for "
                    "7 days with code LOOK15.", "cta": "Shop accessories",
                    "url": "/demo/search?q=bag"},
            eligibility="session.purchases > 0",
        ),
    ]  # fmt: skip
    return found


def category_of(item: Item) -> Category | None:
    leaf = item.leaf_category
    return BY_ID.get(leaf) if leaf is not None else None

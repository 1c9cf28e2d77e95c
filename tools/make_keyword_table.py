"""Generate ``shared/models/imagenet_keywords.json``: readable ImageNet-1k labels and their parents.

Run by hand (offline) from the repository root whenever the groups below change::

    .venv/bin/python tools/make_keyword_table.py

It reads the 1000 labels of ``torchvision.models._meta._IMAGENET_CATEGORIES`` (index order is the
model's logit order), renames the ambiguous ones, and gives each label the broader keywords of
every group it belongs to, most specific (smallest group) first: a tabby gets
``["cat", "feline", "pet", "mammal", "animal"]``. Groups name their members by the original
torchvision labels, so a typo fails loudly instead of tagging the wrong class; the script prints
every group with its indices for review. It also checks that labels are unique and that no label
is spelled like a parent keyword. The output is a JSON list of 1000 ``{"label", "parents"}``
objects, one per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from torchvision.models._meta import _IMAGENET_CATEGORIES

LABELS: list[str] = list(_IMAGENET_CATEGORIES)
INDEX = {label: i for i, label in enumerate(LABELS)}
OUTPUT = Path(__file__).resolve().parent.parent / "shared" / "models" / "imagenet_keywords.json"


def names(text: str) -> list[str]:
    """The labels of a comma-separated list (no ImageNet label holds a comma)."""
    return [name.strip() for name in text.split(",")]


def span(first: str, last: str) -> list[str]:
    """The labels from ``first`` to ``last`` inclusive, in index order."""
    return LABELS[INDEX[first] : INDEX[last] + 1]


# Readable replacements: duplicates, labels spelled like a parent keyword, and labels whose
# everyday reading is another thing (a "kite" that is a bird, a "mouse" that is a computer's).
RENAMES: dict[str, str] = {
    "cock": "rooster",
    "kite": "kite (bird)",
    "crane bird": "crane (bird)",
    "crane": "crane (machine)",
    "hammerhead": "hammerhead shark",
    "cricket": "cricket (insect)",
    "admiral": "admiral butterfly",
    "monarch": "monarch butterfly",
    "ringlet": "ringlet butterfly",
    "sorrel": "sorrel horse",
    "ram": "ram (sheep)",
    "Angora": "Angora rabbit",
    "Madagascar cat": "ring-tailed lemur",
    "boxer": "boxer (dog)",
    "chow": "chow chow",
    "cairn": "cairn terrier",
    "Lhasa": "Lhasa apso",
    "Boston bull": "Boston terrier",
    "Leonberg": "Leonberger",
    "Newfoundland": "Newfoundland dog",
    "Great Pyrenees": "Great Pyrenees dog",
    "Pembroke": "Pembroke corgi",
    "Cardigan": "Cardigan corgi",
    "maillot": "leotard",
    "maillot tank suit": "one-piece swimsuit",
    "jean": "jeans",
    "amphibian": "amphibious vehicle",
    "beach wagon": "station wagon",
    "cab": "taxi",
    "pickup": "pickup truck",
    "racer": "race car",
    "pirate": "pirate ship",
    "liner": "ocean liner",
    "wing": "airplane wing",
    "tank": "army tank",
    "mouse": "computer mouse",
    "notebook": "notebook computer",
    "monitor": "computer monitor",
    "plane": "carpenter's plane",
    "bow": "archery bow",
    "file": "file cabinet",
    "slot": "slot machine",
    "switch": "electric switch",
    "iron": "clothes iron",
    "rule": "ruler",
    "scale": "weighing scale",
    "pick": "guitar pick",
    "brass": "brass plaque",
    "mortar": "mortar and pestle",
    "organ": "pipe organ",
    "upright": "upright piano",
    "pot": "flowerpot",
    "nipple": "baby bottle nipple",
    "swab": "mop",
    "teddy": "teddy bear",
    "vault": "vaulted ceiling",
    "thatch": "thatched roof",
    "mushroom": "edible mushroom",
    "hip": "rose hip",
    "ear": "ear of corn",
    "groom": "bridegroom",
    "ballplayer": "baseball player",
}

# Animals, in WordNet (= index) order.
FISH = span("tench", "stingray") + span("barracouta", "puffer")
BIRDS = span("cock", "great grey owl") + span("black grouse", "black swan") + span("white stork", "albatross")
DOGS = span("Chihuahua", "Mexican hairless")
CATS = span("tabby", "Egyptian cat")
WILD_CATS = span("cougar", "cheetah")
MAMMALS = span("tusker", "wombat") + span("grey whale", "sea lion") + span("Chihuahua", "meerkat")
MAMMALS += span("wood rabbit", "giant panda")

# Objects.
CARS = names("ambulance, beach wagon, cab, convertible, jeep, limousine, minivan, Model T, racer, sports car")
TRUCKS = names(
    "fire engine, garbage truck, moving van, pickup, police van, snowplow, tow truck, trailer truck"
)
BUSES = names("minibus, school bus, trolleybus")
BOATS = names(
    "aircraft carrier, canoe, catamaran, container ship, fireboat, gondola, lifeboat, liner, pirate, "
    "schooner, speedboat, submarine, trimaran, wreck, yawl"
)
AIRCRAFT = names("airliner, airship, space shuttle, warplane, wing")
TRAINS = names("bullet train, electric locomotive, freight car, passenger car, steam locomotive, streetcar")
BICYCLES = names("bicycle-built-for-two, mountain bike")
MOTORCYCLES = names("moped, motor scooter")
OTHER_VEHICLES = names(
    "amphibian, bobsled, dogsled, forklift, go-kart, golfcart, half track, harvester, horse cart, "
    "jinrikisha, oxcart, recreational vehicle, snowmobile, tank, tractor, tricycle, unicycle"
)

FRUIT = span("Granny Smith", "pomegranate")
VEGETABLES = span("head cabbage", "mushroom") + names("corn, ear")
DISHES = names(
    "plate, guacamole, consomme, hot pot, cheeseburger, hotdog, mashed potato, carbonara, meat loaf, pizza, "
    "potpie, burrito"
)
DESSERTS = names("trifle, ice cream, ice lolly, chocolate sauce")
BREAD = names("French loaf, bagel, pretzel")
DRINKS = names("red wine, espresso, cup, eggnog")

INSTRUMENTS = names(
    "accordion, acoustic guitar, banjo, bassoon, cello, chime, cornet, drum, electric guitar, flute, "
    "French horn, gong, grand piano, harmonica, harp, maraca, marimba, oboe, ocarina, organ, panpipe, sax, "
    "steel drum, trombone, upright, violin"
)

CHAIRS = names("barber chair, folding chair, rocking chair, throne")
BEDS = names("bassinet, cradle, crib, four-poster, studio couch")
TABLES = names("desk, dining table")
FURNITURE = CHAIRS + BEDS + TABLES + names(
    "bookcase, chest, chiffonier, china cabinet, entertainment center, file, medicine chest, park bench, "
    "wardrobe"
)

SHOES = names("clog, cowboy boot, Loafer, running shoe, sandal")
HATS = names("bathing cap, bearskin, bonnet, cowboy hat, mortarboard, shower cap, sombrero")
SWIMWEAR = names("bikini, maillot tank suit, swimming trunks")
COATS = names("fur coat, lab coat, trench coat")
NECKTIES = names("bolo tie, bow tie, Windsor tie")
CLOTHING = SHOES + HATS + SWIMWEAR + COATS + NECKTIES + names(
    "abaya, academic gown, apron, bib, brassiere, bulletproof vest, cardigan, cloak, diaper, feather boa, "
    "gown, hoopskirt, jean, jersey, kimono, maillot, military uniform, miniskirt, mitten, overskirt, pajama, "
    "poncho, sarong, ski mask, sock, stole, suit, sweatshirt, vestment"
)

SHOPS = names(
    "bakery, barbershop, bookshop, butcher shop, confectionery, grocery store, shoe shop, tobacco shop, "
    "toyshop"
)
WORSHIP = names("bell cote, church, monastery, mosque, stupa")
BUILDINGS = SHOPS + WORSHIP + names(
    "barn, boathouse, castle, cinema, cliff dwelling, greenhouse, library, lumbermill, palace, planetarium, "
    "prison, restaurant, thatch, tile roof, yurt"
)
BRIDGES = names("steel arch bridge, suspension bridge, viaduct")
MONUMENTS = names("megalith, obelisk, totem pole, triumphal arch")

LANDSCAPES = ["alp"] + span("cliff", "volcano")  # not "bubble", which sits between them
PLANTS = span("rapeseed", "buckeye")
FUNGI = span("coral fungus", "bolete")

BALLS = names(
    "baseball, basketball, croquet ball, golf ball, ping-pong ball, rugby ball, soccer ball, tennis ball, "
    "volleyball"
)
COMPUTERS = names("desktop computer, hand-held computer, laptop, notebook")
PHONES = names("cellular telephone, dial telephone, pay-phone")
CAMERAS = names("Polaroid camera, reflex camera")
GUNS = names("assault rifle, revolver, rifle")

GROUPS: dict[str, list[str]] = {
    # animals
    "animal": span("tench", "puffer"),
    "mammal": MAMMALS,
    "bird": BIRDS,
    "bird of prey": names("kite, bald eagle, vulture, great grey owl"),
    "chicken": names("cock, hen"),
    "parrot": span("African grey", "lorikeet"),
    "waterfowl": span("drake", "black swan"),
    "fish": FISH,
    "shark": span("great white shark", "hammerhead"),
    "amphibian": span("European fire salamander", "tailed frog"),
    "salamander": span("European fire salamander", "axolotl"),
    "frog": span("bullfrog", "tailed frog"),
    "reptile": span("loggerhead", "sidewinder"),
    "turtle": span("loggerhead", "box turtle"),
    "lizard": span("banded gecko", "Komodo dragon"),
    "crocodilian": span("African crocodile", "American alligator"),
    "dinosaur": names("triceratops"),
    "snake": span("thunder snake", "sidewinder"),
    "arachnid": span("harvestman", "tick"),
    "spider": span("black and gold garden spider", "wolf spider"),
    "insect": span("tiger beetle", "lycaenid"),
    "beetle": span("tiger beetle", "weevil"),
    "butterfly": span("admiral", "lycaenid"),
    "crustacean": span("Dungeness crab", "isopod"),
    "crab": span("Dungeness crab", "king crab") + names("hermit crab"),
    "mollusk": span("conch", "chambered nautilus"),
    "marsupial": span("wallaby", "wombat"),
    "whale": span("grey whale", "killer whale"),
    "dog": DOGS,
    "canine": span("Chihuahua", "African hunting dog") + span("red fox", "grey fox"),
    "wolf": span("timber wolf", "red wolf"),
    "wild dog": span("dingo", "African hunting dog"),
    "fox": span("red fox", "grey fox"),
    "cat": CATS,  # domestic cats only: a tiger is a "wild cat", never a "cat"
    "wild cat": WILD_CATS,
    "big cat": span("leopard", "tiger"),
    "feline": CATS + WILD_CATS,
    "pet": DOGS + CATS + names("goldfish, hamster, guinea pig, Angora"),
    "bear": span("brown bear", "sloth bear") + ["giant panda"],
    "rabbit": span("wood rabbit", "Angora"),
    "rodent": span("hamster", "guinea pig"),
    "horse": names("sorrel"),
    "pig": span("hog", "warthog"),
    "cattle": names("ox, water buffalo"),
    "sheep": names("ram, bighorn"),
    "antelope": span("hartebeest", "gazelle"),
    "primate": span("orangutan", "indri"),
    "ape": span("orangutan", "siamang"),
    "monkey": span("guenon", "squirrel monkey"),
    "lemur": names("Madagascar cat, indri"),
    "elephant": names("tusker, Indian elephant, African elephant"),
    # vehicles
    "vehicle": CARS + TRUCKS + BUSES + BOATS + AIRCRAFT + TRAINS + BICYCLES + MOTORCYCLES + OTHER_VEHICLES,
    "car": CARS,
    "truck": TRUCKS,
    "bus": BUSES,
    "boat": BOATS,
    "aircraft": AIRCRAFT,
    "train": TRAINS,
    "bicycle": BICYCLES,
    "motorcycle": MOTORCYCLES,
    # food and drink
    "food": FRUIT + VEGETABLES + DISHES + DESSERTS + BREAD + ["dough"],
    "fruit": FRUIT,
    "vegetable": VEGETABLES,
    "dish": DISHES,
    "dessert": DESSERTS,
    "bread": BREAD,
    "drink": DRINKS,
    # things
    "musical instrument": INSTRUMENTS,
    "guitar": names("acoustic guitar, electric guitar"),
    "piano": names("grand piano, upright"),
    "furniture": FURNITURE,
    "chair": CHAIRS,
    "bed": BEDS,
    "table": TABLES,
    "clothing": CLOTHING,
    "shoe": SHOES,
    "hat": HATS,
    "swimwear": SWIMWEAR,
    "coat": COATS,
    "necktie": NECKTIES,
    "helmet": names("crash helmet, football helmet, pickelhaube"),
    "bag": names("backpack, mailbag, plastic bag, purse"),
    "ball": BALLS,
    "sports equipment": BALLS + names(
        "balance beam, barbell, dumbbell, horizontal bar, parallel bars, puck, punching bag, racket, ski"
    ),
    "electronics": COMPUTERS + PHONES + CAMERAS + names(
        "cassette player, CD player, computer keyboard, hard disc, home theater, iPod, loudspeaker, modem, "
        "monitor, mouse, oscilloscope, photocopier, printer, projector, radio, remote control, screen, "
        "tape player, television"
    ),
    "computer": COMPUTERS,
    "phone": PHONES,
    "camera": CAMERAS,
    "home appliance": names(
        "Crock Pot, dishwasher, electric fan, espresso maker, hand blower, iron, microwave, refrigerator, "
        "rotisserie, sewing machine, space heater, stove, toaster, vacuum, waffle iron, washer"
    ),
    "kitchenware": names(
        "beer glass, caldron, can opener, cleaver, cocktail shaker, coffee mug, coffeepot, corkscrew, "
        "Dutch oven, frying pan, goblet, ladle, measuring cup, mixing bowl, pitcher, plate rack, saltshaker, "
        "soup bowl, spatula, strainer, teapot, tray, wok, wooden spoon"
    ),
    "bottle": names("beer bottle, pill bottle, pop bottle, water bottle, wine bottle"),
    "clock": names("analog clock, digital clock, wall clock"),
    "tool": names("carpenter's kit, chain saw, hammer, hatchet, plane, power drill, screwdriver, shovel"),
    "weapon": GUNS + names("bow, cannon"),
    "rocket": names("missile, projectile"),  # their ImageNet photos include space rockets: not "weapon"
    "gun": GUNS,
    # places and nature
    "building": BUILDINGS,
    "shop": SHOPS,
    "place of worship": WORSHIP,
    "bridge": BRIDGES,
    "monument": MONUMENTS,
    "fence": names("chainlink fence, picket fence, worm fence"),
    "architecture": BUILDINGS + BRIDGES + MONUMENTS + names("dome, vault"),
    "landscape": LANDSCAPES,
    "mountain": names("alp, volcano"),
    "coast": span("promontory", "seashore"),
    "nature": LANDSCAPES + PLANTS + FUNGI,
    "plant": PLANTS,
    "flower": span("rapeseed", "yellow lady's slipper"),
    "fungus": FUNGI + names("mushroom"),
    "mushroom": FUNGI + names("mushroom"),
    "person": span("ballplayer", "scuba diver"),
}


def build_table() -> list[dict[str, object]]:
    """One ``{"label", "parents"}`` row per ImageNet class, in logit order; exits on inconsistencies."""
    if len(LABELS) != 1000 or len(INDEX) != 1000:
        raise SystemExit("expected 1000 unique ImageNet labels")
    used = {name for members in GROUPS.values() for name in members} | set(RENAMES)
    if missing := sorted(used - set(INDEX)):
        raise SystemExit(f"unknown labels: {missing}")
    labels = [RENAMES.get(label, label) for label in LABELS]
    folded = [label.casefold() for label in labels]
    if len(set(folded)) != 1000:
        raise SystemExit("renamed labels are not unique")
    if clashes := sorted(set(folded) & {parent.casefold() for parent in GROUPS}):
        raise SystemExit(f"labels spelled like a parent keyword: {clashes}")
    by_size = sorted(GROUPS, key=lambda parent: len(set(GROUPS[parent])))  # stable: ties keep order
    parents: list[list[str]] = [[] for _ in LABELS]
    for parent in by_size:
        for i in sorted({INDEX[name] for name in GROUPS[parent]}):
            parents[i].append(parent)
    return [{"label": label, "parents": row} for label, row in zip(labels, parents)]


def _ranges(indices: Iterable[int]) -> str:
    """Compact index list: ``151-268, 281-285``."""
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def main() -> None:
    table = build_table()
    for parent, members in GROUPS.items():
        indices = {INDEX[name] for name in members}
        print(f"{parent} ({len(indices)}): {_ranges(indices)}")
        print("    " + ", ".join(LABELS[i] for i in sorted(indices)))
    for old, new in RENAMES.items():
        print(f"rename {INDEX[old]}: {old!r} -> {new!r}")
    rows = ",\n".join(json.dumps(row, ensure_ascii=False) for row in table)
    OUTPUT.write_text(f"[\n{rows}\n]\n", encoding="utf-8")
    print(f"wrote {len(table)} labels to {OUTPUT}")


if __name__ == "__main__":
    main()

"""The shipped default preference dataset: small, deterministic, and built so ORPO shows in minutes.

Three families, every prompt and reply short (a pair is ~120 tokens with the chat template):
  arithmetic  chosen and rejected share their style and differ only in correctness ("7 + 5 = 12."
              vs "7 + 5 = 13."): plain SFT raises both, the odds-ratio term separates them.
  bullets     "Name three ..." answered as a "- " bullet list (chosen) vs comma prose (rejected).
  concise     "What is a ...?" answered in one short sentence (chosen) vs a rambling one (rejected).
The test split holds in-domain prompts and prompts of a kind never seen in training ("ood": true):
subtraction for arithmetic, held-out categories and phrasings for bullets, "What does a <job> do?"
for concise. Each family has a judge, `JUDGES[family](record, answer) -> bool`, that says whether a
generated answer has the preferred property. `build(seed)` returns the splits; the files in
`orpo_lab/data/default/` are written by `scripts/make_default_dataset.py`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data" / "default"
SEED = 1234
FAMILIES = ("arithmetic", "bullets", "concise")

# ---------------------------------------------------------------- lexicons (written for this project)

CATEGORIES = {  # category -> members; the last five categories are held out for the ood test
    "fruits": "apple banana cherry grape mango pear peach plum lemon orange kiwi melon",
    "colours": "red blue green yellow purple orange pink brown black white grey",
    "animals": "dog cat horse cow sheep goat lion tiger bear wolf fox rabbit",
    "vegetables": "carrot potato onion pea bean leek cabbage spinach pepper corn celery",
    "birds": "robin eagle owl sparrow crow swan duck parrot pigeon hawk penguin",
    "musical instruments": "piano guitar violin drum flute trumpet cello harp banjo clarinet",
    "metals": "iron copper gold silver tin zinc lead nickel aluminium platinum",
    "planets": "Mercury Venus Earth Mars Jupiter Saturn Uranus Neptune",
    "sports": "football tennis golf rugby cricket hockey boxing rowing cycling swimming",
    "drinks": "water tea coffee milk juice lemonade cocoa soda",
    "tools": "hammer saw drill wrench chisel pliers screwdriver spanner ladder",
    "shapes": "circle square triangle oval rectangle hexagon star diamond",
    "body parts": "arm leg hand foot head knee elbow shoulder finger ear",
    "trees": "oak pine maple birch willow elm ash cedar beech palm",
    "weather types": "rain snow fog hail wind sunshine thunder frost sleet",
    "kitchen items": "spoon fork knife plate bowl cup pan kettle oven",
    "clothes": "shirt coat hat scarf sock shoe glove dress jacket",
    "flowers": "rose tulip daisy lily orchid poppy sunflower iris violet",
    "vehicles": "car bus train bicycle truck boat plane tram scooter",
    "insects": "ant bee fly moth beetle wasp ladybird cricket butterfly",
    "countries": "France Spain Italy Japan Brazil Canada Kenya India Egypt Peru",
    "fish": "salmon trout cod tuna carp pike herring sardine shark",
    "rooms in a house": "kitchen bedroom bathroom hallway attic cellar lounge study",
    "school subjects": "maths history science art music geography biology chemistry",
    "board games": "chess checkers backgammon scrabble monopoly go ludo",
}
TRAIN_TEMPLATES = ("Name three {c}.", "List three {c}.", "Give me three {c}.")
OOD_TEMPLATES = ("What are three {c}?", "Can you name three {c}?")
N_OOD_CATEGORIES = 5

THINGS = {  # thing -> one short definition (the chosen reply is "A <thing> is <definition>.")
    "clock": "a device that shows the time",
    "bridge": "a structure that lets people cross a river or road",
    "library": "a place where books are kept for people to borrow",
    "volcano": "a mountain that can erupt with hot lava",
    "magnet": "an object that pulls iron towards it",
    "desert": "a dry region that gets very little rain",
    "compass": "a tool that shows which way is north",
    "calendar": "a chart of the days, weeks and months of a year",
    "thermometer": "a tool that measures temperature",
    "island": "a piece of land with water all around it",
    "glacier": "a slow river of ice",
    "map": "a drawing of an area seen from above",
    "battery": "a device that stores electrical energy",
    "telescope": "a tool that makes faraway objects look closer",
    "microscope": "a tool that makes tiny things look bigger",
    "forest": "a large area covered with trees",
    "river": "a large natural stream of water",
    "lighthouse": "a tower with a bright light that guides ships",
    "museum": "a building where old and important objects are shown",
    "recipe": "a set of steps for cooking a dish",
    "poem": "a short piece of writing with rhythm",
    "dictionary": "a book that explains the meaning of words",
    "umbrella": "a folding cover that keeps the rain off",
    "ladder": "a set of steps for climbing up and down",
    "passport": "a document that lets you travel abroad",
    "vaccine": "a medicine that trains the body to fight a disease",
    "planet": "a large body that orbits a star",
    "comet": "a ball of ice and dust that orbits the sun",
    "rainbow": "an arc of colours made by sunlight and rain",
    "harbour": "a sheltered place where ships can stay",
    "canal": "a man-made waterway for boats",
    "password": "a secret word that protects an account",
    "spreadsheet": "a table of numbers that a computer can calculate",
    "keyboard": "a set of keys for typing",
    "printer": "a machine that puts text and images on paper",
    "satellite": "an object that circles a planet",
    "tornado": "a fast spinning column of wind",
    "orchestra": "a large group of musicians playing together",
    "fossil": "the remains of an ancient plant or animal in rock",
    "budget": "a plan for how to spend money",
    "receipt": "a paper that shows what you paid for",
    "tunnel": "a passage that goes under the ground",
    "nest": "a home that birds build for their eggs",
    "hive": "a home where bees live",
    "meteor": "a space rock that burns up in the sky",
    "swamp": "wet land covered with shallow water",
    "cliff": "a high, steep face of rock",
    "valley": "low land between hills or mountains",
    "dam": "a wall that holds back water",
    "puzzle": "a game that tests your thinking",
    "lens": "a curved piece of glass that bends light",
    "seed": "the part of a plant that grows into a new plant",
    "skeleton": "the frame of bones inside a body",
    "muscle": "body tissue that makes parts move",
    "noun": "a word that names a person, place or thing",
    "verb": "a word that describes an action",
    "triangle": "a shape with three sides",
    "square": "a shape with four equal sides",
    "pyramid": "a solid with a square base and four triangular sides",
    "circle": "a round shape with every point the same distance from the centre",
    "vowel": "a letter such as a, e, i, o or u",
    "magnifier": "a lens that makes things look larger",
    "helmet": "a hard hat that protects the head",
    "wallet": "a small case for carrying money and cards",
    "blanket": "a warm cover for a bed",
    "pillow": "a soft cushion for your head",
    "backpack": "a bag that you carry on your back",
    "kettle": "a pot for boiling water",
    "oven": "a box that heats food to cook it",
    "fridge": "a cold cupboard that keeps food fresh",
    "cactus": "a desert plant that stores water in its stem",
    "coral reef": "an underwater structure built by tiny sea animals",
    "hurricane": "a huge storm with very strong winds",
    "earthquake": "a sudden shaking of the ground",
    "continent": "one of the very large land areas of the earth",
    "ocean": "a very large area of salt water",
    "mammal": "a warm-blooded animal that feeds its young with milk",
    "reptile": "a cold-blooded animal with scaly skin",
    "insect": "a small animal with six legs",
    "robot": "a machine that can carry out tasks by itself",
}
N_TEST_THINGS = 15  # held back from training for the in-domain test (two phrasings each)

JOBS = {  # job -> what they do (ood for concise: a question kind never seen in training)
    "baker": "makes bread and cakes",
    "pilot": "flies aircraft",
    "farmer": "grows crops and raises animals",
    "dentist": "looks after people's teeth",
    "librarian": "looks after books and helps readers",
    "plumber": "fits and repairs water pipes",
    "carpenter": "builds things out of wood",
    "nurse": "cares for sick people",
    "chef": "cooks meals in a kitchen",
    "teacher": "helps students learn",
    "firefighter": "puts out fires and rescues people",
    "vet": "treats sick animals",
    "electrician": "installs and repairs wiring",
    "gardener": "looks after plants and gardens",
    "tailor": "makes and mends clothes",
    "journalist": "writes news stories",
    "architect": "designs buildings",
    "postman": "delivers letters and parcels",
    "mechanic": "repairs cars and engines",
    "lifeguard": "keeps swimmers safe",
    "painter": "paints walls and buildings",
    "judge": "decides cases in a court",
    "cashier": "takes payments in a shop",
    "fisherman": "catches fish",
    "astronaut": "travels into space",
    "pharmacist": "prepares and sells medicines",
    "butcher": "cuts and sells meat",
    "photographer": "takes pictures",
    "translator": "turns text from one language into another",
    "waiter": "serves food to customers",
    "scientist": "studies the world through experiments",
    "sailor": "works on a ship",
    "miner": "digs minerals out of the ground",
    "barber": "cuts hair",
    "author": "writes books",
    "zookeeper": "looks after animals in a zoo",
    "cleaner": "keeps places clean",
    "programmer": "writes computer software",
    "police officer": "keeps the peace and enforces the law",
    "surgeon": "performs operations",
}

RAMBLE_OPENERS = (
    "Great question! Let me explain it to you.",
    "Well, that is a really interesting thing to ask.",
    "Sure! Many people wonder about this.",
    "Okay, so here is the thing.",
)
RAMBLE_CLOSERS = (
    "I hope this helps you!",
    "That is the main idea, really.",
    "Let me know if you want to hear more!",
)


def _article(noun: str) -> str:
    return "An" if noun[0].lower() in "aeiou" else "A"


def _ramble(subject: str, predicate: str, rng: random.Random) -> str:
    return f"{rng.choice(RAMBLE_OPENERS)} {subject} {predicate}. {rng.choice(RAMBLE_CLOSERS)}"


def _rec(prompt: str, chosen: str, rejected: str, family: str, ood: bool) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "family": family, "ood": ood}


# ---------------------------------------------------------------- families


def _wrong(answer: int, rng: random.Random) -> int:
    return (
        max(0, answer + rng.choice((-2, -1, 1, 2, 10, -10)))
        if answer > 10
        else answer + rng.choice((1, 2, 3))
    )


def _arithmetic(rng: random.Random) -> tuple[list[dict], list[dict]]:
    sums = [(a, b) for a in range(2, 31) for b in range(2, 31)]
    rng.shuffle(sums)

    def pair(a: int, b: int, op: str, ood: bool) -> dict:
        result = a + b if op == "+" else a - b
        wrong = _wrong(result, rng)
        return _rec(
            f"What is {a} {op} {b}?",
            f"{a} {op} {b} = {result}.",
            f"{a} {op} {b} = {wrong}.",
            "arithmetic",
            ood,
        )

    train = [pair(a, b, "+", False) for a, b in sums[:400]]
    test = [pair(a, b, "+", False) for a, b in sums[400:430]]
    diffs = [(a, b) for a in range(12, 41) for b in range(2, 12)]
    test += [pair(a, b, "-", True) for a, b in rng.sample(diffs, 40)]
    return train, test


def _bullets(rng: random.Random) -> tuple[list[dict], list[dict]]:
    names = list(CATEGORIES)
    seen, held = names[:-N_OOD_CATEGORIES], names[-N_OOD_CATEGORIES:]

    def pair(category: str, template: str, ood: bool) -> dict:
        items = rng.sample(CATEGORIES[category].split(), 3)
        bullets = "\n".join(f"- {item[0].upper() + item[1:]}" for item in items)
        prose = rng.choice(
            (
                "{a}, {b} and {c}.",
                "Three {cat} are {a}, {b} and {c}.",
                "{a}, {b}, and {c} are three {cat}.",
            )
        )
        prose = prose.format(a=items[0], b=items[1], c=items[2], cat=category)
        return _rec(
            template.format(c=category), bullets, prose[0].upper() + prose[1:], "bullets", ood
        )

    train = [pair(rng.choice(seen), rng.choice(TRAIN_TEMPLATES), False) for _ in range(420)]
    test = [pair(rng.choice(seen), rng.choice(TRAIN_TEMPLATES), False) for _ in range(30)]
    test += [pair(c, t, True) for c in held for t in OOD_TEMPLATES for _ in range(4)]
    return train, test


def _concise(rng: random.Random) -> tuple[list[dict], list[dict]]:
    things = list(THINGS)
    rng.shuffle(things)
    seen, held = things[N_TEST_THINGS:], things[:N_TEST_THINGS]
    templates = ("What is {a} {t}?", "What's {a} {t}?", "Tell me what {a} {t} is.")

    def pair(thing: str, template: str) -> dict:
        a = _article(thing).lower()
        chosen = f"{_article(thing)} {thing} is {THINGS[thing]}."
        rejected = _ramble(f"{_article(thing)} {thing}", f"is {THINGS[thing]}", rng)
        return _rec(template.format(a=a, t=thing), chosen, rejected, "concise", False)

    train = [pair(t, tpl) for t in seen for tpl in templates]
    rng.shuffle(train)
    test = [pair(t, tpl) for t in held for tpl in rng.sample(templates, 2)]
    for job, does in JOBS.items():
        subject = f"{_article(job)} {job}"
        test.append(
            _rec(
                f"What does {subject.lower()} do?",
                f"{subject} {does}.",
                _ramble(subject, does, rng),
                "concise",
                True,
            )
        )
    return train, test


def build(seed: int = SEED) -> dict[str, list[dict]]:
    """{"train": [...], "test": [...]}: the same records for the same seed, every time."""
    rng = random.Random(seed)
    train, test = [], []
    for make in (_arithmetic, _bullets, _concise):
        a, b = make(rng)
        train += a
        test += b
    rng.shuffle(train)
    return {"train": train, "test": test}


# ---------------------------------------------------------------- judges


def prompt_text(prompt: str | list[dict]) -> str:
    """The user's question: the prompt string, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def _expected_result(prompt: str | list[dict]) -> int:
    a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", prompt_text(prompt)).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def judge_arithmetic(record: dict, answer: str) -> bool:
    """The number after the first "=" (else the first number that is not an operand) is right."""
    expected = _expected_result(record["prompt"])
    after = re.search(r"=\s*(-?\d+)", answer)
    if after:
        return int(after.group(1)) == expected
    operands = [int(x) for x in re.findall(r"\d+", prompt_text(record["prompt"]))]
    numbers = [int(x) for x in re.findall(r"-?\d+", answer)]
    rest = [n for n in numbers if n not in operands]
    return bool(rest) and rest[0] == expected


def judge_bullets(record: dict, answer: str) -> bool:
    """At least three lines that start with "- ", and nothing numbered."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    return sum(line.startswith("- ") for line in lines) >= 3 and not any(
        re.match(r"\d+[.)]", line) for line in lines
    )


def judge_concise(record: dict, answer: str) -> bool:
    """One sentence of at most 16 words."""
    text = answer.strip()
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    return 0 < len(text.split()) <= 16 and len(sentences) == 1 and "\n" not in text


JUDGES: dict[str, Callable[[dict, str], bool]] = {
    "arithmetic": judge_arithmetic,
    "bullets": judge_bullets,
    "concise": judge_concise,
}


def judge(family: str, record: dict, answer: str) -> bool:
    """Whether a generated `answer` to `record["prompt"]` has the family's preferred property."""
    return JUDGES[family](record, answer)

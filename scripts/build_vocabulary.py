#!/usr/bin/env python
"""Build src/tinystories/resources/vocabulary.json: ~1,500 words a 3-4 year old understands.

    .venv/bin/python scripts/build_vocabulary.py            # rewrite the shipped list
    .venv/bin/python scripts/build_vocabulary.py --check    # exit 1 if the shipped list differs
    .venv/bin/python scripts/build_vocabulary.py --out /tmp/v.json --report

The TinyStories paper generated every story around one random noun, verb and adjective
drawn from "about 1500 basic words ... a typical 3-4 year-old child" understands, split
roughly a third each. That list was not published, so this script is how ours was made,
and it reproduces the shipped JSON byte for byte (tests/test_vocab.py checks that).

How a word gets in:
1. A person proposes it: the hand-written candidate lists below, grouped by theme (animals,
   food, the body, ...), aiming at concrete, everyday, child-friendly words. Frequency
   rankings alone cannot do this part: the most frequent English nouns are words like
   "government", "system" and "issue", which no 3-year-old knows.
2. The machine checks it, so the list stays consistent with real data:
   - part of speech: lemminflect's lookup tables (the Automatically Generated Inflection
     Database, AGID) must know the lowercase word as a lemma of that part of speech; verbs
     must be their own base form. Capitalised-only entries (names, places) fail this test,
     which keeps proper nouns out. A few participle adjectives ("scared") that the tables
     file only under VERB are accepted through POS_OVERRIDES, deliberately and visibly.
   - frequency: wordfreq's Zipf frequency must be at least MIN_ZIPF; rarer candidates are
     dropped as too unusual for a small child's stories.
   - DENY: words that must never appear (violence, sex, drugs, alcohol, swearing, insults,
     death, adult, abstract, business, political or technical words). Candidates that hit it
     are removed. Today it removes nothing, because people wrote the candidates with it in
     mind; it guards later edits and is the sample the tests check against.
   - a word may sit in two categories only if SHARED says so (e.g. "brush" is a thing and
     an action); any other overlap is a curation error and stops the build.
3. Frequency is a floor, not a ranking cut. Trimming each category to its N most frequent
   words was tried and rejected: wordfreq counts adult text (news, web, subtitles), so the
   cut fell on exactly the words that make the list a child's (giraffe, crayon, mitten,
   ladybug) and kept "man", "world", "line". The stage's `max_per_category` option still
   ranks by frequency when a user wants a smaller list.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "src" / "tinystories" / "resources" / "vocabulary.json"

# wordfreq's Zipf scale: 3.0 is once per million words. 2.4 still admits "ladybug" (2.67)
# and "tiptoe" (2.64) but drops obscure proposals.
MIN_ZIPF = 2.4
WORDLIST = "large"
UPOS = {"nouns": "NOUN", "verbs": "VERB", "adjectives": "ADJ"}
BASE_TAG = {"NOUN": "NN", "VERB": "VB", "ADJ": "JJ"}

# ---------------------------------------------------------------------------------------
# Candidates, grouped by theme under '#' headings.
# ---------------------------------------------------------------------------------------

NOUNS = """
# pets and farm animals
dog puppy cat kitten bird duck duckling chicken chick hen rooster cow calf horse pony pig
piglet sheep lamb goat donkey rabbit bunny mouse hamster fish goldfish pet turkey goose
kitty doggy
# wild animals
lion tiger bear elephant giraffe zebra monkey hippo kangaroo koala panda fox wolf deer
moose squirrel raccoon hedgehog skunk otter beaver mole camel gorilla rhino reindeer
# birds, water animals, creepy crawlies
owl parrot penguin swan eagle crow robin pigeon peacock flamingo seagull dolphin whale
shark octopus crab seal turtle frog toad tadpole jellyfish starfish snail worm bug ant bee
butterfly caterpillar ladybug spider beetle firefly dragonfly grasshopper lizard snake bat
# pretend creatures
dinosaur dragon unicorn monster fairy giant elf mermaid robot alien
# the body
head hair face eye ear nose mouth tooth tongue lip cheek chin neck shoulder arm elbow hand
finger thumb leg knee foot toe tummy belly body skin bone voice fur paw eyebrow tail wing
beak feather whisker horn claw shell
# people
mom mommy dad daddy mother father baby brother sister grandma grandpa granny grandmother
grandfather aunt uncle cousin family friend boy girl kid child man woman lady teacher
doctor nurse farmer baker firefighter pilot king queen prince princess pirate clown cook
chef neighbor dentist vet driver person twin buddy helper mailman fireman policeman sailor
captain knight wizard astronaut cowboy hero babysitter
# food and drink
food apple banana orange grape strawberry berry blueberry cherry lemon peach pear plum
melon watermelon pineapple carrot pea corn potato tomato bean pumpkin broccoli lettuce
mushroom bread toast butter cheese egg milk juice water cookie cake cupcake pie candy
chocolate cream sugar honey jam jelly sandwich soup pizza pasta noodle rice cereal muffin
pancake waffle popcorn pretzel cracker nut peanut snack lunch breakfast dinner meal treat
lollipop gum salt burger salad yogurt cocoa seed acorn icecream dessert biscuit bun donut
coconut onion pepper spaghetti hamburger meat
# toys and play
toy ball doll teddy block puzzle kite balloon bubble game crayon paper book story picture
drum whistle bell trumpet guitar piano music song rocket swing slide sandbox sand bucket
shovel castle tent playground party present gift box surprise sticker marble rope hoop bat
bead yoyo violin xylophone tambourine puppet costume mask fort treasure map prize medal
flag wand coin money piggy
# vehicles
car truck bus train plane airplane boat ship bike bicycle tricycle wagon scooter tractor
helicopter taxi van ambulance sled wheel engine spaceship motorcycle stroller
# clothes and things we wear
shirt sock shoe boot hat cap coat jacket dress skirt sweater scarf glove mitten button
zipper pocket belt bib umbrella backpack bag crown necklace ring bow ribbon apron helmet
sneaker sandal slipper pajamas raincoat shorts jeans scissors
# home
house home room door window wall floor roof stair step bed pillow blanket crib chair table
couch sofa lamp light clock cup mug plate bowl spoon fork pan pot oven stove fridge sink
bath bathtub tub soap towel toothbrush toothpaste comb brush mirror toilet potty shower
basket jar bottle lid key phone radio camera kitchen bedroom bathroom closet shelf drawer
rug carpet curtain candle broom mop trash bin tape glue pencil pen chalk letter card photo
chimney porch hammer nail tool ladder hose string cupboard desk cushion quilt sponge
napkin bandage bench nightlight
# outside and nature
sun moon star sky cloud rain snow wind storm thunder lightning rainbow weather tree leaf
branch flower grass bush plant root rock stone stick mud dirt puddle pond lake river sea
ocean beach wave island hill mountain forest jungle field farm barn garden park path road
street bridge tunnel cave nest hole fire ice snowflake snowman sunshine night day morning
evening sunset sunrise spring summer winter air earth world ground waterfall meadow
pinecone web rose daisy sunflower tulip pebble log bark fog breeze wood dandelion
# places
school store shop zoo library playground pool town city village tower palace circus bakery
cafe classroom playroom yard fence gate sidewalk hospital castle restaurant garage
backyard
# time, shapes, things we do and share
birthday picnic nap dream race trip noise sound color shape circle square triangle heart
line dot spot number word name secret wish magic sign fun hug kiss smile song snack
bedtime playtime morning holiday lunchbox lullaby drawing painting hiccup sneeze
"""

VERBS = """
# moving the body
jump run walk hop skip skate swim climb crawl fly dance march tiptoe stomp stamp slide
swing ride spin twirl roll bounce tumble fall slip wiggle wobble shake stretch bend kneel
sit stand reach lean rest sleep nap wake yawn relax float dive
# hands
push pull lift carry drop throw catch kick hold grab squeeze press poke tickle scratch rub
pat tap clap wave point touch hug cuddle snuggle kiss pet pick pack unpack fill pour spill
stir mix shake hang fold wrap unwrap open close shut lock unlock knock ring tie zip build
stack pile sort match fit fix mend break cut paste tear
# eating and caring for ourselves
eat drink bite chew lick sip swallow taste smell feed cook bake boil fry peel slice spread
share munch nibble gobble gulp wash clean wipe scrub brush comb dry bathe dress wear
change tidy sweep dust rinse soak splash paddle
# senses and mind
see look watch stare peek peep hear listen feel notice find lose search hide seek count
guess wonder think know remember forget learn understand imagine pretend dream believe
decide choose wish hope want need like love enjoy miss care worry
# talking and sounds
talk say tell ask answer speak call shout yell whisper sing hum whistle laugh giggle smile
grin cry sob sniff sneeze cough hiccup chat read write draw paint color spell thank greet
welcome invite promise agree explain sigh cheer chant rhyme
# animal sounds and actions
bark meow moo quack roar growl squeak chirp hiss purr buzz oink neigh baa hoot howl flap
peck hatch gallop trot waddle slither scurry
# going places
go come leave arrive enter visit stay follow lead chase race win lose hurry rush wait stop
start begin finish end return travel move turn cross wander explore drive sail row fly
steer pedal zoom
# growing things, outdoors
grow plant dig water pick rake sprout bloom blossom shine glow sparkle twinkle melt freeze
rain snow drip flow blow pop float camp fish hike
# playing and making
play pretend build make draw color paint sing dance share trade swap borrow lend give take
get bring put keep carry show hide collect decorate design create invent blow juggle skate
ski surf kick toss roll bounce score cheer clap celebrate practice try teach help save
rescue protect guard look check measure weigh
# everyday life
buy pay shop sell open close use need ask help wake dress brush bathe sleep dream snore
hug smile sneeze sew knit vacuum fold hang cover fill empty spill clean tidy recycle
# getting along
share apologize forgive behave obey listen wait comfort hug kiss thank laugh joke cuddle
care help trust
# more actions in stories
appear disappear shrink stretch search discover arrive sparkle wink blink nod shrug frown
pout giggle tiptoe sneak creep bounce splash squish squash crunch slurp sniff lick blow
whistle clap skip zoom soar glide drift flutter buzz hurry scamper scoot wiggle jiggle
shiver tremble dangle swing hop stumble bump spin whirl twirl shout mumble chatter babble
fetch leap live scoop sprinkle tuck twist breathe chop dip drag gather jog rise print
repeat escape meet pass copy crumble deliver dodge doze echo fidget flip glance itch join
load nuzzle pant perch pounce prance rattle remind repair reply roam scare scribble
shuffle skid snip snooze sprint squawk squeal squirt stroll sulk swirl swoop tangle topple
tow trace trudge tug untie vanish wade wag warn weave wriggle argue recognize sniffle
grumble unzip meow send sway snap mash spray mow polish doodle balance hover jingle
chuckle blush gaze dash braid wilt burst hush sketch dribble plan prepare floss
"""

ADJECTIVES = """
# size and shape
big small little tiny huge giant large tall short long round flat thin wide narrow deep
shallow high low heavy light enormous gigantic teeny curly straight wavy pointy sharp
square
# feel and texture
hot cold warm cool wet dry soft hard smooth rough bumpy fuzzy fluffy furry hairy sticky
slimy slippery squishy squeaky crunchy crispy creamy juicy gooey silky prickly spiky lumpy
bouncy wobbly wiggly stretchy cozy comfy comfortable snug cuddly scratchy
# looks and colors
red orange yellow green blue purple pink brown black white gray golden silver colorful
striped spotted dotted plain shiny sparkly glittery bright dark clear pale pretty
beautiful lovely cute handsome fancy neat tidy messy dirty clean muddy dusty sandy new old
young fresh ripe rotten stale
# sound and speed
loud quiet noisy silent fast slow quick
# taste and smell
yummy tasty delicious sweet sour salty bitter spicy smelly stinky
# feelings
happy sad angry mad grumpy cranky scared afraid frightened brave shy proud silly funny
glad excited bored tired sleepy hungry thirsty sick lonely calm cheerful grateful thankful
sorry worried nervous upset surprised amazed jealous curious eager joyful jolly merry
playful grouchy gloomy miserable disappointed confused embarrassed
# how we are and behave
kind nice mean gentle careful polite rude friendly helpful naughty good bad clever smart
wise honest fair patient lazy busy ready awake asleep alive alone wild tame strong weak
tough loyal generous greedy selfish bossy sneaky cheeky cheery sweet hardworking
# weather and time
sunny rainy snowy windy cloudy foggy stormy icy frosty chilly freezing breezy early late
# how things are
full empty open closed broken lost whole real pretend magic special favorite easy hard
simple safe dangerous lucky fine okay wrong right true same different next last first
extra free rich poor strange odd weird secret famous perfect terrible awful horrible
wonderful great amazing fantastic super awesome cool nice fun useful useless hollow solid
sharp dull tight loose thick fragile sturdy healthy clean quiet curious favorite difficult
correct
# more looks, feel and taste
wooden frozen plastic electric musical rocky grassy leafy bushy hilly shady starry misty
rosy spotty stripy patchy shaggy woolly feathery spongy springy bendy floppy mushy crinkly
wrinkly glossy damp dim crisp crooked stiff steep bare blank oval scarlet violet blonde
jumbo mini soggy crumbly chewy fizzy greasy minty fruity cheesy buttery lemony sugary
bland fishy yucky icky bubbly moldy slushy tropical polar indoor outdoor invisible
# more feelings and ways of being
scary precious magical peaceful pleasant mysterious adorable delightful splendid fabulous
gorgeous terrific hilarious exciting boring interesting unusual ordinary foolish unhappy
fierce mighty speedy lively handmade homemade miniature tricky handy hopeful thoughtful
harmless helpless stubborn energetic respectful sore royal brilliant excellent incredible
extraordinary magnificent spectacular stray unlucky giggly dizzy itchy dreamy sulky giddy
goofy wacky picky fussy clumsy sloppy impatient truthful unfair unkind unfriendly caring
loving active ill delighted thrilled relieved puzzled fearless timid bashful homesick
pleased bold sparkling glowing
"""

# Participle adjectives that lemminflect files only under VERB. They are among the first
# feeling words children use, so they are accepted as adjectives on purpose.
POS_OVERRIDES = {
    "adjectives": {"scared", "surprised", "lost", "bored", "frightened", "amazed", "yummy", "sparkly", "stinky"},
    # Everyday nouns missing from the lookup tables (or filed only as verbs there).
    "nouns": {"teddy", "fridge", "pan", "log", "burger", "cocoa", "lunchbox"},
    "verbs": {"meow"},
}

# Words that really are both categories, listed so that overlap is a decision, not an accident.
SHARED = {
    "brush": ("nouns", "verbs"),
    "hug": ("nouns", "verbs"),
    "kiss": ("nouns", "verbs"),
    "smile": ("nouns", "verbs"),
    "swing": ("nouns", "verbs"),
    "slide": ("nouns", "verbs"),
    "nap": ("nouns", "verbs"),
    "dream": ("nouns", "verbs"),
    "sneeze": ("nouns", "verbs"),
    "hiccup": ("nouns", "verbs"),
    "race": ("nouns", "verbs"),
    "wish": ("nouns", "verbs"),
    "rain": ("nouns", "verbs"),
    "snow": ("nouns", "verbs"),
    "water": ("nouns", "verbs"),
    "plant": ("nouns", "verbs"),
    "fish": ("nouns", "verbs"),
    "pet": ("nouns", "verbs"),
    "cook": ("nouns", "verbs"),
    "color": ("nouns", "verbs"),
    "shop": ("nouns", "verbs"),
    "ring": ("nouns", "verbs"),
    "comb": ("nouns", "verbs"),
    "whistle": ("nouns", "verbs"),
    "wave": ("nouns", "verbs"),
    "dress": ("nouns", "verbs"),
    "bark": ("nouns", "verbs"),
    "light": ("nouns", "adjectives"),
    "orange": ("nouns", "adjectives"),
    "magic": ("nouns", "adjectives"),
    "secret": ("nouns", "adjectives"),
    "fun": ("nouns", "adjectives"),
    "giant": ("nouns", "adjectives"),
    "square": ("nouns", "adjectives"),
    "pretend": ("verbs", "adjectives"),
    "open": ("verbs", "adjectives"),
    "clean": ("verbs", "adjectives"),
    "tidy": ("verbs", "adjectives"),
    "empty": ("verbs", "adjectives"),
    "dry": ("verbs", "adjectives"),
}

# Never in the list. A candidate that hits this is dropped and reported.
DENY = """
# violence and weapons
kill murder shoot stab punch hit fight attack hurt wound beat slap gun rifle pistol bullet
bomb weapon knife sword war battle army soldier enemy blood bloody violent violence choke
strangle torture kidnap steal rob thief drown poison
# death
die dead death dying grave funeral coffin corpse ghost skeleton skull
# sex and bodies
sex sexy naked nude butt boob breast penis vagina
# drugs, alcohol, smoking
drug drugs beer wine vodka whiskey alcohol drunk cigarette smoke tobacco weed pill
# swearing and insults (slurs are not spelled out: no candidate above is one, and each was
# read by a person)
damn hell crap shit fuck bitch bastard ass stupid dumb idiot ugly fat loser moron hate
# adult, abstract, business, political, technical
tax bank business company government president politics election vote law crime prison
jail court judge lawyer office job economy price cost profit sale contract policy system
data software internet email religion church god
"""


def _words(block: str) -> list[str]:
    out = []
    for line in block.splitlines():
        line = line.split("#", 1)[0]
        out.extend(line.split())
    return out


def _dedupe(words: list[str]) -> list[str]:
    seen: set[str] = set()
    return [w for w in words if not (w in seen or seen.add(w))]


def versions() -> dict[str, str]:
    return {pkg: metadata.version(pkg) for pkg in ("wordfreq", "lemminflect")}


def build() -> tuple[dict, dict]:
    """Return (vocabulary, report). The vocabulary is exactly what gets written."""
    from lemminflect import getAllInflections
    from wordfreq import zipf_frequency

    deny = set(_words(DENY))
    proposed = {"nouns": _dedupe(_words(NOUNS)), "verbs": _dedupe(_words(VERBS)), "adjectives": _dedupe(_words(ADJECTIVES))}
    report: dict[str, dict[str, list[str]]] = {}
    final: dict[str, list[str]] = {}
    for cat, words in proposed.items():
        dropped: dict[str, list[str]] = {"denied": [], "not_pos": [], "rare": []}
        keep = []
        upos = UPOS[cat]
        for w in words:
            if w in deny:
                dropped["denied"].append(w)
                continue
            # The tables key lowercase lemmas; the word must be its own base form (NN, VB, JJ),
            # which rejects plurals, past forms and comparatives as well as names.
            ok = w in getAllInflections(w, upos).get(BASE_TAG[upos], ())
            if not ok and w not in POS_OVERRIDES.get(cat, ()):
                dropped["not_pos"].append(w)
                continue
            z = zipf_frequency(w, "en", wordlist=WORDLIST)
            if z < MIN_ZIPF:
                dropped["rare"].append(w)
                continue
            keep.append(w)
        final[cat] = sorted(keep)
        report[cat] = dropped

    members: dict[str, list[str]] = {}
    for cat, words in final.items():
        for w in words:
            members.setdefault(w, []).append(cat)
    errors = []
    shared = {}
    for w, cats in sorted(members.items()):
        if len(cats) > 1:
            if tuple(sorted(cats)) != tuple(sorted(SHARED.get(w, ()))):
                errors.append(f"{w!r} is in {cats} but SHARED says {SHARED.get(w, ())}")
            else:
                shared[w] = cats
    for w, cats in SHARED.items():
        if w not in shared:
            errors.append(f"SHARED lists {w!r} for {cats} but the build keeps it in {members.get(w, [])}")
    if errors:
        raise SystemExit("curation error: " + "; ".join(errors))

    total = sum(len(v) for v in final.values())
    vocab = {
        **final,
        "meta": {
            "description": "Basic words a 3-4 year old understands (TinyStories, Eldan & Li 2023, section 2).",
            "build_script": "scripts/build_vocabulary.py",
            "sources": {
                "wordfreq": {"version": versions()["wordfreq"], "wordlist": f"en/{WORDLIST}", "min_zipf": MIN_ZIPF},
                "lemminflect": {"version": versions()["lemminflect"], "use": "part of speech and base form from its lookup tables"},
                "hand_curation": "themed candidate lists, DENY list and SHARED list in the build script",
            },
            "counts": {**{cat: len(v) for cat, v in final.items()}, "total": total, "distinct": len(members)},
            "shared": shared,
            "pos_overrides": {cat: sorted(w for w in words if w in final[cat]) for cat, words in sorted(POS_OVERRIDES.items())},
        },
    }
    return vocab, report


def render(vocab: dict) -> str:
    return json.dumps(vocab, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if --out differs from a fresh build")
    ap.add_argument("--report", action="store_true", help="print every dropped candidate and why")
    args = ap.parse_args(argv)
    vocab, report = build()
    text = render(vocab)
    if args.report:
        for cat, dropped in report.items():
            for why, words in dropped.items():
                if words:
                    print(f"{cat} {why} ({len(words)}): {' '.join(words)}")
    print(json.dumps(vocab["meta"]["counts"]))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} differs from a fresh build; rerun without --check", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

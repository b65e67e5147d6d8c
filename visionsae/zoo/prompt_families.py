"""Disjoint prompt families for ItD on the zoo: one selects features, one calibrates, one evaluates.

Every figure of an erasure must come from prompts that chose nothing. So each of the ten
Fashion-MNIST class concepts has three families of prompts, split by *template and phrasing*
(never by random prompt), and no template, noun phrase, description, scene or near miss
appears in more than one family:

* ``select``    — chooses the SAE features (and trains the SAE): the zoo's training captions
  (``captions.TRAIN_*``) with more noun phrases, descriptions and scenes written for it, and
  the class word's basic forms and misspellings in those templates;
* ``calibrate`` — sets the classifier thresholds and the edit strength: its own templates,
  noun phrases, descriptions, scenes and near misses;
* ``evaluate``  — measures: its own templates, noun phrases, descriptions, scenes and near
  misses, written after the classifier was designed and read only by the final measurement
  (the first lists written for it were looked at during the design, so they calibrate now).
  Nothing in it chose anything.

Each family has the same *kinds* of prompts (:data:`KINDS`): the class under other names in
templates (``nouns``), the class word's basic forms (singular, plural, upper case, with and
without article, :data:`CLASS_WORDS`), misspellings of the class word (``typos``, made with
nlpaug's character augmenters, keeping only non-words), descriptions that avoid the class
word, the class word inside a long scene (``scenes``, still within the tokenizer's 20
tokens), and for the negative side near misses (things like the class but not of it: other
footwear for sneaker, other carried things for bag) and generic prompts (ImageNet classes
other than garments, footwear and bags, their own classes and templates per family).

The erasure evaluation (``visionsae eval erasure``) generates from ``evaluate`` only; the
zoo's concept set (``visionsae.zoo.training.text_sae``) is built from ``select`` and ``calibrate``.
``tests/zoo/test_prompt_families.py`` checks the families are disjoint.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from .captions import CLASS_NAMES, NUM_CLASSES, SYNONYMS, TRAIN_DESCRIPTIONS, TRAIN_TEMPLATES
from ..errors import UsageError

FAMILIES: tuple[str, ...] = ("select", "calibrate", "evaluate")
KINDS: tuple[str, ...] = ("nouns", "basic_forms", "typos", "descriptions", "scenes")
NEGATIVE_KINDS: tuple[str, ...] = ("near_misses", "generic")

# The class word of each class, singular and plural (basic forms and typos are made from it).
CLASS_WORDS: tuple[tuple[str, str], ...] = (
    ("t-shirt", "t-shirts"),
    ("trouser", "trousers"),
    ("pullover", "pullovers"),
    ("dress", "dresses"),
    ("coat", "coats"),
    ("sandal", "sandals"),
    ("shirt", "shirts"),
    ("sneaker", "sneakers"),
    ("bag", "bags"),
    ("ankle boot", "ankle boots"),
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "select": TRAIN_TEMPLATES,
    "calibrate": (
        "a photograph of {}",
        "a nice picture of {}",
        "a product shot of {}",
        "a detailed photo of {}",
        "{} against a gray backdrop",
        "a picture showing {}",
        "an advert with {}",
        "a listing photo of {}",
        "a bright picture of {}",
        "a scan of {}",
        "a tiny picture of {}",
        "{} photographed from above",
    ),
    "seen": (
        "a clean shot of {}",
        "{} on a white background",
        "a thumbnail showing {}",
        "a blurry photo of {}",
        "a snapshot of {}",
        "a fashion picture of {}",
        "there is {} in this picture",
        "an e-commerce photo of {}",
        "a high quality photo of {}",
        "an old photo of {}",
        "a store display of {}",
        "a web shop image of {}",
        "a quick sketch of {}",
        "a magazine photo of {}",
        "a square photo of {}",
        "{} lying on a table",
    ),
}

# Noun phrases of each class per family (select: the zoo's training synonyms).
NOUNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "select": tuple(train + extra for train, extra in zip(SYNONYMS, (
        ("a crew-neck tee", "a cotton t-shirt", "a baggy tee", "a souvenir t-shirt", "a muscle tee",
         "a printed t-shirt", "a kids t-shirt", "a white tee"),
        ("a pair of slacks", "flared trousers", "cropped trousers", "a pair of track pants", "palazzo pants",
         "bootcut jeans", "a pair of culottes", "harem pants"),
        ("a cashmere sweater", "a wool jumper", "a christmas jumper", "a cardigan-style pullover",
         "a ribbed sweater", "a polo-neck jumper", "a cricket sweater", "a knit pullover"),
        ("an evening gown", "a summer dress", "a maxi gown", "a little black dress", "a shirt dress",
         "a bodycon dress", "a smock dress", "a sheath dress"),
        ("a parka", "an overcoat", "a winter jacket", "a mackintosh", "a rain jacket", "a car coat", "a fur coat",
         "a shearling jacket"),
        ("flip-flops", "a pair of slides", "a strappy sandal", "espadrille sandals", "a sport sandal",
         "a flat sandal", "a slingback sandal", "a pair of jandals"),
        ("a button-down shirt", "a flannel shirt", "a blouse", "a polo shirt", "a work shirt",
         "a short-sleeved shirt", "a collared shirt", "a grandad shirt"),
        ("trainers", "running sneakers", "a pair of kicks", "high-tops", "a skate shoe", "plimsolls",
         "a pair of runners", "a tennis trainer"),
        ("a tote bag", "a handbag", "a purse", "a rucksack", "a shoulder bag", "a clutch bag", "a holdall",
         "a beach bag"),
        ("chelsea boots", "a bootie", "a pair of short boots", "an ankle-length boot", "a suede bootie",
         "a heeled ankle boot", "a zip-up ankle boot", "a pair of paddock boots"),
    ))),
    "calibrate": (
        ("a graphic tee", "a v-neck t-shirt", "a plain white tee", "a sleeveless tee"),
        ("chinos", "cargo pants", "a pair of chinos", "khakis"),
        ("a wool sweater", "a hoodie", "a cable-knit jumper", "a fleece pullover"),
        ("a cocktail dress", "a sundress", "a maxi dress", "a ball gown"),
        ("a trench coat", "a raincoat", "a puffer jacket", "a windbreaker"),
        ("a gladiator sandal", "beach sandals", "a pair of flip-flops", "slides"),
        ("a dress shirt", "an oxford shirt", "a denim shirt", "a linen shirt"),
        ("tennis shoes", "a pair of trainers", "gym shoes", "a basketball shoe"),
        ("a backpack", "a satchel", "a clutch", "a messenger bag"),
        ("a combat boot", "a pair of booties", "a suede boot", "hiking boots"),
    ),
    "seen": (
        ("a striped t-shirt", "a band tee", "a black tee", "a cropped top", "a jersey top"),
        ("denim jeans", "a pair of cargo trousers", "dress pants", "corduroy trousers", "sweatpants"),
        ("a turtleneck sweater", "a crewneck sweatshirt", "a chunky knit", "a hooded sweatshirt", "a knitted jumper"),
        ("a wedding dress", "a floral dress", "a mini dress", "a party frock", "a slip dress"),
        ("a pea coat", "a down jacket", "an anorak", "a wool overcoat", "a bomber jacket"),
        ("open-toe sandals", "a leather sandal", "thong sandals", "a wedge sandal", "summer sandals"),
        ("a plaid shirt", "a poplin shirt", "a checked shirt", "a silk blouse", "a white formal shirt"),
        ("athletic shoes", "a running shoe", "canvas sneakers", "a high-top sneaker", "jogging shoes"),
        ("a duffel bag", "a briefcase", "a handbag with a strap", "a shopping bag", "a crossbody bag"),
        ("a leather ankle boot", "work boots", "a cowboy boot", "a pair of winter boots", "a heeled bootie"),
    ),
}

# Descriptions that avoid the class word (select: the zoo's training descriptions).
DESCRIPTIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "select": tuple(train + extra + more for train, extra, more in zip(TRAIN_DESCRIPTIONS, (
        ("a top with short sleeves for the weekend", "a thin jersey top with a print on the chest",
         "a loose top with short arms and no collar", "a cotton top for a summer holiday",
         "a comfortable top with short sleeves for sleeping", "a white top with short sleeves and a small logo"),
        ("smart legwear with a crease down the front", "a pair of baggy pants for skating",
         "stretchy legwear for yoga", "long legwear with a drawstring waist",
         "a pair of worn denims with torn knees", "formal legwear for a wedding suit"),
        ("a knitted top with a round neck for autumn", "a soft top of cashmere with long sleeves",
         "a woolly top with a reindeer pattern", "a loose knit with long sleeves for the weekend",
         "a warm top with a hood and a front pocket", "a ribbed knit with long sleeves"),
        ("a short outfit with a skirt for a summer party", "a long silk outfit for a ball",
         "a one-piece outfit with a belt and short sleeves", "a flowing outfit for a garden party",
         "a little black outfit for the evening", "a one-piece outfit with a pleated skirt"),
        ("a waterproof outer layer with a hood", "a long woollen outer layer with a belt",
         "a quilted outer layer for skiing", "a thick outer layer with a fur collar",
         "an outer layer with big buttons for cold mornings", "a warm outer layer for a walk in the snow"),
        ("flat footwear with a strap between the toes", "footwear with cork soles for the summer",
         "open-toed footwear for a walk by the sea", "footwear with velcro straps for hiking in summer",
         "light footwear with two thin straps", "open footwear with a low heel and a buckle"),
        ("a top with a collar and buttons for work", "a crisp white top with cuffs",
         "a striped top with a button-down collar", "a long-sleeved top with a breast pocket",
         "a formal top to wear with a tie", "a top with a mandarin collar and buttons"),
        ("footwear with laces and a foam sole for running", "comfortable footwear for tennis",
         "bright shoes for the gym with a rubber sole", "a pair of shoes for a marathon",
         "low shoes with three stripes and laces", "light footwear for training with a mesh upper"),
        ("a carrier with a zip and a shoulder strap", "a leather carrier for documents",
         "a small accessory with a chain strap for an evening out", "a large carrier for a weekend trip",
         "a fabric carrier with two handles", "an accessory for holding a phone, keys and lipstick"),
        ("footwear with a zip at the side up to the ankle", "short leather footwear with a thick heel",
         "chunky laced footwear that covers the ankle", "short suede footwear for autumn walks",
         "footwear with a pull tab that covers the ankle", "sturdy short footwear with an elastic side"),
    ), (
        ("a short-sleeved top with a slogan across the front",
         "a fitted cotton top with short sleeves and a crew neck", "a baggy top with short sleeves for the beach",
         "a printed top with short sleeves from a festival", "a top with short sleeves in bright yellow",
         "a soft jersey top with a scoop neck and short arms", "a striped top with short sleeves like a sailor",
         "an oversized top with short sleeves and a big print", "a short-sleeved top worn under a hoodie",
         "a thin cotton top with short sleeves for jogging", "a top with short sleeves and a pocket on the chest",
         "a kids top with short sleeves and a dinosaur", "a black top with short sleeves and a skull print",
         "a top with short sleeves sold as a souvenir", "a short-sleeved top made of organic cotton"),
        ("long legwear with a flat front and side pockets", "a pair of long bottoms for hiking",
         "legwear with wide legs and a high waist", "a pair of long bottoms with an elastic waist",
         "slim legwear in navy blue for the office", "long legwear made of corduroy",
         "a pair of long bottoms with a belt", "legwear with a zip fly and back pockets",
         "loose long bottoms made of linen for summer", "a pair of black long bottoms for a waiter",
         "legwear that reaches the ankles with a cuff", "long legwear with a check pattern",
         "a pair of long bottoms for a school uniform", "tight long legwear made of stretch denim",
         "long legwear with knee patches"),
        ("a knitted top with long sleeves and a cable pattern", "a warm top you pull over your head in the morning",
         "a long-sleeved knit in heather grey", "a woollen top with a turtle neck",
         "a cosy knit with ribbed cuffs and hem", "a heavy knitted top for sailing",
         "a thin merino knit with long sleeves", "a long-sleeved fleece top without a zip",
         "a knitted top with a snowflake pattern for christmas", "a loose knit with dropped shoulders",
         "a long-sleeved knit in a chunky rib", "a warm knitted top with elbow patches",
         "a soft top of lambswool for winter", "a knit with long sleeves worn over a collar",
         "a warm long-sleeved top with a crew neck made of wool"),
        ("a one-piece outfit with a full skirt and a sash", "a summer outfit in one piece with thin straps",
         "a long one-piece gown for the red carpet", "a short one-piece outfit with puffed sleeves",
         "a one-piece outfit with a halter neck", "a simple one-piece outfit for the office",
         "a sequined one-piece outfit for new year", "a one-piece outfit with a tiered skirt",
         "a long floaty one-piece outfit for the beach", "a one-piece outfit with a high neck and long sleeves",
         "a bridesmaid outfit in one piece", "a knitted one-piece outfit for winter",
         "a one-piece outfit with a wrap front and a tie", "a satin one-piece outfit that reaches the floor",
         "a girl's one-piece party outfit with a bow"),
        ("a heavy outer layer that reaches the knees", "outerwear with a belt and a wide collar",
         "a warm outer garment with toggles and a hood", "a lightweight outer layer for spring showers",
         "a thick padded outer layer with a zip", "a long dark outer layer for a funeral",
         "an outer garment lined with sheepskin", "outerwear with a storm flap and deep pockets",
         "a tailored outer layer in grey wool", "a waterproof outer garment for fishing",
         "a warm outer layer for the school run in winter", "a long outer garment with epaulettes",
         "an outer layer filled with down feathers", "a checked outer garment with big lapels",
         "outerwear you hang by the door when you come in"),
        ("open footwear with a strap around the heel", "flat footwear made of leather straps for holidays",
         "footwear with a single strap across the toes", "open shoes with a wedge heel for summer",
         "footwear with a toe loop and a flat sole", "rubber footwear with straps for the river",
         "open footwear with beads on the straps", "summer footwear with crossed straps and a buckle",
         "breezy footwear with an open heel and toes", "footwear with thin straps and a small heel for a wedding",
         "open-toed footwear with a padded footbed", "footwear made of straps for a greek island",
         "sporty open footwear with adjustable straps", "open footwear with a t-bar strap",
         "footwear with woven straps and an open toe"),
        ("a top with buttons all the way down and a collar", "a long-sleeved top with a button-down collar in blue",
         "a formal top with double cuffs", "a crisp top with a yoke and buttons",
         "a short-sleeved top with a collar and buttons for summer", "a flannel top with buttons for the woods",
         "a top with buttons and a pointed collar for a wedding", "a linen top with buttons for the beach",
         "a fitted top with a collar and buttons in pink", "a top with mother of pearl buttons and a collar",
         "a work top with a collar and two chest pockets", "a top with a collar and buttons to wear with a suit",
         "a cotton top with buttons and rolled-up sleeves", "a top with press studs and a collar",
         "a white collared top with buttons for school"),
        ("sporty footwear with laces and a rubber sole", "cushioned shoes for a long run",
         "low-cut shoes with a mesh upper for the gym", "lace-up shoes with a rubber sole for everyday wear",
         "white leather shoes with laces and a flat sole", "shoes with velcro straps and a rubber sole for kids",
         "light lace-up footwear for skateboarding", "high-top shoes with laces for basketball",
         "shoes with a springy sole for jogging", "colourful lace-up footwear for the track",
         "canvas lace-up footwear with a flat rubber sole", "shoes with a swoosh and laces",
         "breathable footwear with laces for a workout", "lace-up footwear with a chunky sole and a padded collar",
         "comfy rubber-soled shoes for walking the dog"),
        ("a carrier with a strap to wear over the shoulder", "a leather carrier with a clasp",
         "a holdall for the gym with a zip", "a carrier you take on a plane as hand luggage",
         "a small leather carrier worn across the body", "a carrier with pockets for a laptop and papers",
         "a carrier made of straw for the beach", "a soft carrier with a drawstring top",
         "a designer carrier with a gold chain", "a carrier with wheels and a handle for travel",
         "a cloth carrier for the supermarket", "a carrier for nappies and bottles",
         "a sturdy carrier worn on the back for hiking", "a tiny carrier for coins and a lipstick",
         "a carrier with a flap and a magnetic clasp"),
        ("footwear that stops just above the ankle with a zip", "leather footwear to the ankle with a stacked heel",
         "laced footwear that covers the ankle for walking", "short footwear with elastic sides for riding",
         "footwear to the ankle with a pointed toe and a heel", "suede footwear to the ankle with a fringe",
         "waterproof footwear up to the ankle for autumn", "short footwear with a buckle strap around the ankle",
         "footwear with a lug sole that ends above the ankle", "black footwear to the ankle with a low block heel",
         "short lace-up footwear for the army", "footwear with a cosy lining up to the ankle",
         "short footwear with a wedge heel covering the ankle",
         "footwear that covers the ankle with a side zip and a round toe",
         "short leather footwear with a zip for a night out"),
    ))),
    "calibrate": (
        ("a casual cotton top with short sleeves and a round neck", "a loose summer top with a printed logo",
         "a light top with short arms for hot days", "a basic short-sleeved top for everyday wear"),
        ("long legwear with a zip and a button", "something to wear on your legs to work",
         "full-length legwear made of denim", "a garment with two long legs and pockets"),
        ("a cosy knitted top with long sleeves for winter", "a warm top made of wool",
         "a thick long-sleeved top you put on over your head", "a soft knit to wear when it is cold"),
        ("a one-piece garment for women that reaches the knees", "an elegant outfit for a party",
         "a flowing piece of clothing for a summer wedding", "a sleeveless one-piece outfit with a skirt"),
        ("warm outerwear to wear over your clothes in winter", "a long garment with buttons to keep out the rain",
         "thick outerwear with a hood and a zip", "something to put on over everything when it snows"),
        ("open footwear with straps for the beach", "light summer footwear that shows the toes",
         "footwear with a thin sole and buckled straps", "strappy shoes for a hot day"),
        ("a long-sleeved top with buttons and a collar for the office", "a formal top with a pointed collar",
         "a checked top with buttons down the front", "a button-front top with cuffs"),
        ("lace-up shoes with rubber soles for the gym", "comfortable shoes for a morning run",
         "sporty low shoes for exercise", "casual shoes with laces and a thick sole"),
        ("something to carry your wallet and phone in", "a leather carrier with a long strap",
         "a container with handles for shopping", "an accessory for carrying books to school"),
        ("footwear that covers the ankle with a small heel", "sturdy shoes that reach above the ankle",
         "short leather footwear with a zip for autumn", "winter footwear with a thick sole up to the ankle"),
    ),
    "seen": (
        ("a short-sleeved cotton top with a band logo", "something light with short sleeves for a hot day",
         "a simple crew-neck top for the gym", "a soft top with short sleeves and no buttons",
         "a casual summer top with a round collar"),
        ("legwear with belt loops and two long legs", "denim legwear for the weekend",
         "long bottoms with pockets on the side", "a full-length garment for the legs with a zipper",
         "smart long legwear for a job interview"),
        ("a long-sleeved knitted top for the ski trip", "a woollen top to wear over a blouse",
         "a chunky knit for chilly evenings", "a warm knitted garment with a ribbed collar",
         "a heavy wool top for a snowy day"),
        ("a knee-length one-piece outfit with thin straps", "a long flowing outfit for a gala night",
         "a light one-piece summer outfit with a flower pattern", "an evening outfit with a fitted waist and a long skirt",
         "a one-piece garment with a flared skirt for dancing"),
        ("heavy outerwear with a fur-lined hood", "a long buttoned garment to wear over a suit",
         "thick outerwear for a snowy walk", "a padded zip-up layer for freezing weather",
         "warm outerwear with big pockets and a belt"),
        ("open-toed footwear with a buckle strap", "flat summer footwear with straps across the foot",
         "strappy footwear for a walk on the sand", "footwear with leather straps that leaves the toes bare",
         "light footwear with a cork sole and two straps"),
        ("a button-down top with long sleeves for a meeting", "a crisp top with a collar and cuffs",
         "a striped top with buttons for the office", "a cotton top with a collar and a chest pocket",
         "a smart long-sleeved top to wear under a blazer"),
        ("low shoes with laces and a cushioned sole for running", "sporty footwear for the basketball court",
         "comfortable shoes with rubber soles for walking all day", "casual lace-up footwear with a white sole",
         "light shoes for a jog in the park"),
        ("a carrier with two handles for groceries", "a leather accessory with a shoulder strap for your phone and keys",
         "something with a zip to carry your laptop", "a small carrier for a night out",
         "a canvas carrier for the beach"),
        ("footwear that reaches just above the ankle with a low heel", "leather footwear with laces that covers the ankle",
         "chunky winter footwear up to the ankle", "suede footwear with a side zip that covers the ankle",
         "short footwear with a block heel for the rain"),
    ),
}

# Long sentences with a noun phrase ``{}`` inside or at the end (they fit the 20-token prompts).
SCENES: dict[str, tuple[str, ...]] = {
    "select": (
        "a sunny afternoon in the park with {} next to the bench",
        "my friend left {} on the kitchen table yesterday",
        "a busy street market where someone sells {} and fruit",
        "we packed {} into the car before the holiday",
        "a photo from the wedding with {} near the cake",
        "my little brother wanted {} for his birthday",
        "in the school lost and found box there is {}",
        "a rainy day in london and {} in a puddle",
    ),
    "calibrate": (
        "a quiet hotel room with {} on the bed and a lamp",
        "an old wooden shelf in a shop holding {} and some hats",
        "on a rainy morning at the bus stop i noticed {}",
    ),
    "seen": (
        "a cozy living room with a sofa and {} on the floor",
        "after the long walk home she put {} by the door",
        "a window display on a busy street with {} in the middle",
        "on a rainy evening in the old town i finally bought {}",
        "the last thing left in the empty shop window was {}",
    ),
}

# Things like each class but not of it (other footwear for sneaker, other carried things for bag).
NEAR_MISSES: dict[str, tuple[tuple[str, ...], ...]] = {
    "select": (
        ("a scarf", "a bow tie", "a pair of boxer shorts", "a sports bra", "a silk handkerchief"),
        ("a skirt", "a belt", "a pair of leggings", "a pair of boxer shorts", "a garter", "a pair of suspenders"),
        ("a wool hat", "a blanket", "a pair of woollen socks", "a knitted glove", "a ball of yarn"),
        ("an apron", "a bathrobe", "a petticoat", "a bed sheet", "a table runner"),
        ("a bulletproof vest", "a cape", "a motorcycle helmet", "a pair of ski gloves", "a hooded towel"),
        ("a bath mat", "a sock", "a pair of insoles", "a doormat", "a foot spa"),
        ("a necktie", "a cufflink", "a suit vest", "a tie clip", "a collar stay"),
        ("a slip-on shoe", "clogs", "a high heel", "an ice skate", "a pair of wellies", "a stiletto",
         "a house slipper", "a wooden sabot", "a riding boot", "a pair of espadrilles", "a dance shoe"),
        ("an umbrella", "a water bottle", "a laptop", "a pencil", "a thermos flask", "a tablet computer",
         "a paperback novel", "a pocket knife", "a bicycle helmet", "a lunchbox", "a notebook", "a key ring"),
        ("a knee pad", "a shoe horn", "a sock with a heel", "a pair of flip-flop socks", "a boot jack"),
    ),
    "calibrate": (
        ("a bandana", "a necklace"),
        ("a kilt", "swimming trunks"),
        ("a pair of mittens", "a quilt"),
        ("a long skirt", "a shawl"),
        ("a sleeping bag", "a duvet"),
        ("a beach towel", "a pair of slippers"),
        ("a pocket square", "a coat hanger"),
        ("a leather loafer", "a ballet flat", "a wooden clog", "a ski boot"),
        ("a smartphone", "a book", "a set of keys", "a camera"),
        ("a shoelace", "a pair of leg warmers"),
    ),
    "seen": (
        ("a swimsuit", "a bikini", "a baseball cap"),
        ("a pleated skirt", "a leather belt", "knee socks"),
        ("a beanie", "a knitted scarf", "a wool blanket"),
        ("a tutu", "a curtain", "a bath towel"),
        ("a tent", "a thick blanket", "an umbrella stand"),
        ("a straw hat", "a pair of socks", "a bathing suit"),
        ("a windsor tie", "a lanyard", "an ironing board"),
        ("a high-heeled shoe", "an oxford shoe", "a moccasin", "a rubber rain boot", "a roller skate"),
        ("a coffee cup", "a newspaper", "a tennis racket", "a pair of sunglasses", "a wristwatch"),
        ("a ballet shoe", "a pair of tights", "a shoe box"),
    ),
}

# The first lists written for ``evaluate`` (above, "seen") were looked at while the classifier
# was designed, so they can no longer evaluate: their templates, noun phrases, descriptions and
# scenes select (a linear read-out generalises to new noun phrases only when fitted on many),
# their near misses calibrate. ``evaluate`` holds lists written after that, read only by the
# final measurement.
for _table in (TEMPLATES, SCENES):
    _table["select"] = _table["select"] + _table.pop("seen")
for _table in (NOUNS, DESCRIPTIONS):
    _table["select"] = tuple(a + b for a, b in zip(_table["select"], _table.pop("seen")))
NEAR_MISSES["calibrate"] = tuple(a + b for a, b in zip(NEAR_MISSES["calibrate"], NEAR_MISSES.pop("seen")))

TEMPLATES["evaluate"] = (
    "a sharp photo of {}", "an overhead shot of {}", "an image from a catalogue showing {}", "a rendered image of {}",
    "a lookbook photo of {}", "{} in soft light", "{} on display", "a souvenir photo of {}",
    "a polaroid of {}", "a mobile phone photo of {}", "an instagram post of {}", "a faded photo of {}",
    "a monochrome image of {}", "a sample photo of {}", "a flat lay of {}", "a front view of {}",
)
NOUNS["evaluate"] = (
    ("a logo tee", "a ringer t-shirt", "a pocket tee", "a tie-dye t-shirt", "a raglan tee"),
    ("wide-leg trousers", "a pair of joggers", "linen pants", "skinny jeans", "pinstripe trousers"),
    ("a mohair sweater", "a fair isle jumper", "a v-neck pullover", "a zip-up sweatshirt", "an argyle sweater"),
    ("a wrap dress", "a lace gown", "a prom dress", "a shift dress", "a tea dress"),
    ("a duffle coat", "a fleece jacket", "a quilted coat", "a leather jacket", "a camel coat"),
    ("a pair of slide sandals", "hiking sandals", "a platform sandal", "jelly sandals", "a toe-post sandal"),
    ("a chambray shirt", "a hawaiian shirt", "a tuxedo shirt", "a western shirt", "a gingham blouse"),
    ("a pair of running trainers", "retro sneakers", "chunky sneakers", "a cross-training shoe", "a leather sneaker"),
    ("a drawstring bag", "a weekender bag", "a bucket bag", "a canvas tote", "a doctor bag"),
    ("a chukka boot", "a pair of desert boots", "a lace-up ankle boot", "a platform boot", "a biker boot"),
)
DESCRIPTIONS["evaluate"] = (
    ("a thin top with short sleeves from a concert merch stand", "a loose top with short sleeves to wear under a jacket",
     "a stretchy top with short sleeves for running", "a top with short sleeves printed with a cartoon",
     "a plain short-sleeved top in a pack of three"),
    ("legwear with a straight cut and turn-ups", "comfortable long bottoms for a lazy sunday",
     "smart grey legwear with pleats", "long work bottoms with many pockets", "tailored legwear that matches the jacket"),
    ("a warm woolly top with a zigzag pattern", "a roll-neck knit for the mountains", "a cosy top knitted by grandma",
     "a thick knit with long sleeves and a v-neck", "a fluffy long-sleeved knit for winter evenings"),
    ("a one-piece outfit with spaghetti straps", "a long outfit with a train for a bride",
     "a polka dot one-piece outfit with a bow", "a fitted one-piece outfit for a cocktail party",
     "a velvet one-piece outfit for the theatre"),
    ("a long warm layer with a double row of buttons", "outerwear with a toggle fastening",
     "a padded layer with a furry hood for the arctic", "a smart outer layer in camel wool",
     "a lined outer layer for a rainy autumn"),
    ("flat footwear with a thong between the toes", "open summer footwear with cross straps",
     "footwear with an ankle strap and an open toe", "airy footwear made of woven straps",
     "rubber footwear for the pool with open toes"),
    ("a top with a button placket and a stiff collar", "a long-sleeved top with french cuffs",
     "a short-sleeved top with buttons and a camp collar", "a denim top with snap buttons",
     "a crisp cotton top with a spread collar"),
    ("lace-up footwear with a padded tongue for sport", "shoes with air cushioning for basketball",
     "canvas shoes with a rubber toe cap", "footwear with a grippy sole for the gym",
     "casual low-top footwear with white laces"),
    ("a leather carrier with a flap and a buckle", "something to take your gym clothes in",
     "a roomy carrier with handles for a day at the beach", "a small pouch on a long strap for a wallet and keys",
     "a woven carrier for the farmers market"),
    ("lace-up footwear with a rugged sole that covers the ankle", "footwear with a buckle that hugs the ankle",
     "short black leather footwear with a heel for a night out", "padded footwear to the ankle for snowy streets",
     "footwear with a chunky heel that ends at the ankle"),
)
SCENES["evaluate"] = (
    "a small apartment where {} sits on a wooden chair",
    "in the corner of the old shop there was {}",
    "a child pointed at {} in the window",
    "the tourist forgot {} at the train station",
    "at the flea market we found {} under a table",
)
NEAR_MISSES["evaluate"] = (
    ("a swimming cap", "a sweatband", "a wristband", "a pair of earrings"),
    ("a pair of gaiters", "a tool belt", "a silk sash", "a pair of shin guards"),
    ("a knitted toy", "a fleece throw", "a crochet doily", "a knitted tea cosy"),
    ("a bridal veil", "a lace tablecloth", "a tiara", "a bouquet of flowers"),
    ("a fur rug", "a pair of earmuffs", "a hot water bottle", "a fleece blanket"),
    ("a beach umbrella", "a pool float", "a sun hat", "a foot massager"),
    ("a button", "a sewing machine", "a pair of braces", "a clothes peg"),
    ("a pair of brogues", "a satin mule", "a platform heel", "a pair of football boots", "a pair of deck shoes",
     "a snowshoe"),
    ("a walking stick", "a flashlight", "a pair of headphones", "a passport", "a tape measure", "a skateboard"),
    ("a horseshoe", "a shoe brush", "a pair of spurs", "a stirrup"),
)


# Generic prompts: ImageNet classes that are neither garments, footwear nor bags (those are
# the concepts themselves, or their near misses), split by class and by template per family.
APPAREL_IMAGENET_CLASSES: frozenset[int] = frozenset({
    399, 400, 411, 414, 433, 439, 443, 445, 451, 452, 457, 459, 461, 464, 465, 474, 490, 496, 501, 502,
    514, 515, 518, 524, 529, 531, 568, 578, 597, 601, 608, 610, 614, 615, 617, 630, 636, 638, 639, 655,
    658, 667, 679, 689, 697, 728, 735, 747, 748, 770, 774, 775, 788, 790, 793, 797, 806, 808, 824, 826,
    834, 836, 837, 841, 842, 869, 879, 887, 893, 903, 906,
})


def _template_key(template: str) -> str:
    """A template reduced to its words without articles: 'a blurry photo of a {}.' and
    'a blurry photo of {}' are the same template."""
    words = re.sub(r"[^a-z{} ]", " ", template.lower().replace("-", " ")).split()
    return " ".join(w for w in words if w not in ("a", "an", "the"))


@lru_cache(maxsize=None)
def generic_templates() -> dict[str, tuple[str, ...]]:
    """open_clip's 80 ImageNet templates split over the families (as ``{}`` templates). A template
    that is also a zoo template of a family goes to that family; the rest in turn."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    owner = {_template_key(t): fam for fam, ts in (*TEMPLATES.items(), *SCENES.items()) for t in ts}
    out: dict[str, list[str]] = {f: [] for f in FAMILIES}
    for fn in OPENAI_IMAGENET_TEMPLATES:  # "a photo of a {}." and "a photo of the {}." go together
        t = fn("{}")
        key = _template_key(t)
        if key not in owner:
            owner[key] = FAMILIES[len({k for k in owner if owner[k] is not None}) % len(FAMILIES)]
        out[owner[key]].append(t)
    return {f: tuple(v) for f, v in out.items()}


@lru_cache(maxsize=None)
def generic_classes() -> dict[str, tuple[str, ...]]:
    """ImageNet class names other than apparel, split over the families by a fixed shuffle."""
    from open_clip import IMAGENET_CLASSNAMES

    ids = [i for i in range(len(IMAGENET_CLASSNAMES)) if i not in APPAREL_IMAGENET_CLASSES]
    random.Random("generic-classes").shuffle(ids)
    return {f: tuple(IMAGENET_CLASSNAMES[i] for i in sorted(ids[j:: len(FAMILIES)])) for j, f in enumerate(FAMILIES)}


def generic_prompts(family: str, count: int | None = None, seed: int = 0) -> list[str]:
    """Generic prompts of ``family``: its ImageNet classes in its templates (``count`` of them,
    drawn without replacement in a seeded order; all of them when ``count`` is None)."""
    _check_family(family)
    templates, classes = generic_templates()[family], generic_classes()[family]
    pool = sorted({t.format(c) for t in templates for c in classes})
    if count is None:
        return pool
    if count > len(pool):
        raise UsageError(f"asked for {count} generic {family} prompts; the family has {len(pool)}")
    return random.Random(f"{seed}-{family}").sample(pool, count)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise UsageError(f"unknown prompt family {family!r}; expected one of {FAMILIES}")


def _check_label(label: int) -> int:
    if not 0 <= int(label) < NUM_CLASSES:
        raise UsageError(f"class label must be in 0..{NUM_CLASSES - 1}, got {label}")
    return int(label)


def basic_forms(label: int, family: str) -> list[str]:
    """The class word as users type it: singular and plural, with and without article, upper
    case, in the family's templates and scenes. The bare words ("sneaker", "SNEAKERS") are the
    concept's name and belong to ``select`` only (they are its ``{}`` template)."""
    label, _ = _check_label(label), _check_family(family)
    singular, plural = CLASS_WORDS[label]
    article = "an" if singular[0] in "aeiou" else "a"
    forms = (f"{article} {singular}", plural, singular)  # with article, plural, without article
    out = [singular, plural, f"{article} {singular}", singular.upper(), plural.upper()] if family == "select" else []
    for i, template in enumerate(TEMPLATES[family]):
        phrase = template.format(forms[i % 3])
        out.append(phrase.upper() if i % 4 == 3 else phrase)
    for i, scene in enumerate(SCENES[family]):
        out.append(scene.format(forms[i % 3]))
    return _unique(out)


def _unique(prompts) -> list[str]:
    return list(dict.fromkeys(prompts))


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Known English words (symspellpy's frequency dictionary): a typo that spells one of
    them is another word, not a misspelling."""
    from ..concepts.normalize import english_words as words

    return words()


def misspell(word: str, count: int, seed: str) -> list[str]:
    """Up to ``count`` distinct misspellings of ``word`` (one or two characters changed by
    nlpaug's keyboard, swap, delete and insert augmenters), none an English word."""
    import nlpaug.augmenter.char as nac
    import numpy as np

    known = english_words()
    augmenters = [
        nac.KeyboardAug(aug_char_min=1, aug_char_max=1, aug_word_p=1.0, include_special_char=False,
                        include_numeric=False, include_upper_case=False),
        nac.RandomCharAug(action="swap", aug_char_min=1, aug_char_max=1, aug_word_p=1.0),
        nac.RandomCharAug(action="delete", aug_char_min=1, aug_char_max=1, aug_word_p=1.0),
        nac.RandomCharAug(action="insert", aug_char_min=1, aug_char_max=1, aug_word_p=1.0,
                          include_upper_case=False, include_numeric=False, spec_char=""),
    ]
    out: list[str] = []
    rng = random.Random(seed)
    for attempt in range(count * 20):
        if len(out) >= count:
            break
        aug = augmenters[attempt % len(augmenters)]
        state = rng.randrange(2**31)
        random.seed(state)
        np.random.seed(state)
        typo = aug.augment(word)[0].lower()
        if typo != word and typo not in known and " " not in typo.strip() and typo not in out:
            out.append(typo)
    return out


def typo_prompts(label: int, family: str) -> list[str]:
    """Misspellings of the class word (its longest run of letters: "shirt" of "t-shirt") in the
    family's templates."""
    label, _ = _check_label(label), _check_family(family)
    singular, plural = CLASS_WORDS[label]
    templates = TEMPLATES[family]
    out = []
    for n, form in enumerate((singular, plural)):
        word = max(re.findall(r"[a-z]+", form), key=len)
        for i, typo in enumerate(misspell(word, len(templates) // 2, f"{family}-{label}-{n}")):
            phrase = form.replace(word, typo)
            article = ("an " if phrase[0] in "aeiou" else "a ") if n == 0 else ""
            out.append(templates[(2 * i + n) % len(templates)].format(article + phrase))
    return _unique(out)


# In ``select`` (a training set) each noun phrase goes into a rotating share of the templates and
# scenes, not all of them, and each description also into a few templates: the cross product
# would make descriptions 3% of a class's prompts and the fit would neglect them.
SELECT_TEMPLATES_PER_NOUN = 12
SELECT_SCENES_PER_NOUN = 4
SELECT_TEMPLATES_PER_DESCRIPTION = 4


def _rotating(items: tuple[str, ...], n_of: int, start: int) -> list[str]:
    return [items[(start + j) % len(items)] for j in range(min(n_of, len(items)))]


def _in_frames(label: int, family: str, frames: tuple[str, ...], per_noun: int) -> list[str]:
    """The family's noun phrases of the class in ``frames`` (templates or scenes): in ``select``
    each noun phrase in ``per_noun`` of them, rotating; elsewhere every pair."""
    nouns = NOUNS[family][label]
    if family == "select":
        return _unique(f.format(n) for i, n in enumerate(nouns) for f in _rotating(frames, per_noun, i * per_noun))
    return _unique(f.format(n) for f in frames for n in nouns)


def noun_prompts(label: int, family: str) -> list[str]:
    """The family's noun phrases of the class in the family's templates (in ``select``, each
    in :data:`SELECT_TEMPLATES_PER_NOUN` of them, rotating)."""
    label, _ = _check_label(label), _check_family(family)
    return _in_frames(label, family, TEMPLATES[family], SELECT_TEMPLATES_PER_NOUN)


def scene_prompts(label: int, family: str) -> list[str]:
    """The family's noun phrases of the class inside the family's scenes (in ``select``, each in
    :data:`SELECT_SCENES_PER_NOUN` of them, rotating)."""
    label, _ = _check_label(label), _check_family(family)
    return _in_frames(label, family, SCENES[family], SELECT_SCENES_PER_NOUN)


def description_prompts(label: int, family: str) -> list[str]:
    """The family's descriptions of the class (in ``select``, also each in
    :data:`SELECT_TEMPLATES_PER_DESCRIPTION` of its templates, rotating)."""
    label, _ = _check_label(label), _check_family(family)
    out = list(DESCRIPTIONS[family][label])
    if family == "select":
        templates = TEMPLATES[family]
        out += [t.format(d) for i, d in enumerate(DESCRIPTIONS[family][label])
                for t in _rotating(templates, SELECT_TEMPLATES_PER_DESCRIPTION, i * SELECT_TEMPLATES_PER_DESCRIPTION)
                if len(t.format(d).replace("-", " ").split()) <= 12]  # within the zoo tokenizer's 20 tokens
    return _unique(out)


def concept_prompts(label: int, family: str) -> dict[str, list[str]]:
    """Every positive prompt of class ``label`` in ``family``, by kind (:data:`KINDS`)."""
    return {
        "nouns": noun_prompts(label, family),
        "basic_forms": basic_forms(label, family),
        "typos": typo_prompts(label, family),
        "descriptions": description_prompts(label, family),
        "scenes": scene_prompts(label, family),
    }


def near_miss_prompts(label: int, family: str) -> list[str]:
    """Near misses of class ``label`` (not the class) alone and in the family's first templates."""
    label, _ = _check_label(label), _check_family(family)
    misses = NEAR_MISSES[family][label]
    templates = TEMPLATES[family]
    return _unique([*misses, *(templates[i % len(templates)].format(m) for i, m in enumerate(misses))])


def class_name(label: int) -> str:
    return CLASS_NAMES[_check_label(label)]


def class_words(label: int) -> list[str]:
    """The words of class ``label``'s name, singular and plural ("t-shirt": t, shirt, shirts)."""
    _check_label(label)
    return sorted({w for form in CLASS_WORDS[label] for w in form.replace("-", " ").split()})


def class_pairs(label: int, family: str) -> list[tuple[str, str]]:
    """(with, without) prompt pairs of class ``label`` in ``family`` (a concept direction's
    pairs): each template of the family with one of the class's noun phrases, and with the
    same-placed noun phrase of each other class."""
    _check_family(family)
    _check_label(label)
    nouns = NOUNS[family]
    return [(t.format(nouns[label][i % len(nouns[label])]), t.format(nouns[o][i % len(nouns[o])]))
            for i, t in enumerate(TEMPLATES[family]) for o in range(len(nouns)) if o != label]

"""ConvAI2 / PersonaChat-style dialogues whose personas are revealed only implicitly.

Persona prediction (arXiv 2111.15093) learns a speaker's persona from the dialogue history alone,
so the dialogues here never say a persona sentence verbatim: "i like drawing stars." surfaces as
"i spend every weekend painting little stars ." Each episode records which of its persona facts
each turn reveals (``annotations``), the ground truth for persona-prediction models.

Text follows the official ConvAI2 files: lower case, punctuation split off by spaces in
utterances, persona sentences ending in a bare ".", 20 candidates per turn with the gold response
last. Each persona holds 3–5 facts from distinct topics; a topic's facts are mutually exclusive
(two favourite colours would contradict), and ``CLASHING_FACTS`` lists the few cross-topic pairs
that would contradict too, so no persona holds both.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from grainvl.data.world.ontology import COLORS, SHAPES
from grainvl.data.world.text_tasks import plural_shape


@dataclass(frozen=True)
class PersonaFact:
    """One persona sentence (``text``, ConvAI2 style) and utterances that reveal it implicitly."""

    topic: str
    text: str
    hints: tuple[str, ...]


def _color_facts() -> list[PersonaFact]:
    return [
        PersonaFact(
            "color",
            f"my favorite color is {c}.",
            (
                f"i painted my whole bedroom {c} last summer.",
                f"somehow nearly everything in my closet ends up {c}.",
                f"whenever there is a choice i grab the {c} one, every single time.",
            ),
        )
        for c in COLORS
    ]


def _drawing_facts() -> list[PersonaFact]:
    return [
        PersonaFact(
            "drawing",
            f"i like drawing {plural_shape(s)}.",
            (
                f"i spend every weekend painting little {plural_shape(s)}.",
                f"my notebooks are full of {plural_shape(s)} i doodle during meetings.",
                f"i just finished a sketch with about a hundred {plural_shape(s)} on it.",
            ),
        )
        for s in SHAPES
    ]


# topic -> (persona sentence, implicit hints). Keep hints free of the sentence itself (tests check).
# fmt: off
_HAND_WRITTEN: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "pet": (
        ("i have a dog named max.", ("max barked at the mailman again this morning.",
                                     "i need to take max for his walk soon, he is already at the door with his leash.",
                                     "max chewed up another one of my shoes, silly puppy.")),
        ("i have a cat.", ("my cat knocked a glass off the table again today.",
                           "i woke up with a furry little thing purring on my face.",
                           "the litter box is my least favorite chore.")),
        ("i have two rabbits.", ("my bunnies chewed through a phone cable last night.",
                                 "i grow extra carrots just for the two furballs in my backyard hutch.",
                                 "both my bunnies love hopping around the living room.")),
        ("i keep a tank of tropical fish.", ("i spent the morning cleaning the aquarium glass.",
                                             "my clownfish finally let the new angelfish near the coral.",
                                             "watching my fish swim around calms me down.")),
        ("i have a parrot that talks.", ("my bird learned to say hello in a perfect copy of my voice.",
                                         "polly keeps whistling the phone ringtone and confusing everyone.",
                                         "my feathered roommate repeats every bad word he hears.")),
        ("i own a horse.", ("i ride out to the stables before work every morning.",
                            "my mare threw a shoe yesterday so the farrier is coming over.",
                            "hay prices this year are killing me, she eats so much.")),
    ),
    "job": (
        ("i am a nurse.", ("i just got off a twelve hour shift at the hospital.",
                           "taking care of patients all night is tiring but worth it.",
                           "the doctors on my ward are great to work with.")),
        ("i work as a teacher.", ("i spent the evening grading homework from my third graders.",
                                  "my students were so loud in class today.",
                                  "summer break is the best part of working at a school.")),
        ("i am a baker.", ("i was up at four to get the bread in the oven before we opened.",
                           "my croissants sold out before noon at the shop.",
                           "i always smell like flour after work.")),
        ("i drive a bus for a living.", ("my route goes right through downtown every morning.",
                                         "passengers always forget their umbrellas on my bus.",
                                         "i spend eight hours a day behind the wheel of a city bus.")),
        ("i am a software engineer.", ("i spent all day fixing a bug in our code.",
                                       "my team ships a new version of our app every friday.",
                                       "i write python at work and then again at home for fun.")),
        ("i work at a library.", ("i reshelved about three hundred books today.",
                                  "people keep returning books late to my front desk.",
                                  "i get to help kids find their first chapter books at work.")),
        ("i am a firefighter.", ("we got called out to a kitchen fire at three in the morning.",
                                 "my shift at the station starts at seven.",
                                 "carrying the hose up six flights of stairs is a workout.")),
        ("i am a mail carrier.", ("i walked about ten miles delivering letters today.",
                                  "dogs on my route are not always friendly.",
                                  "people wave at me when i bring their packages.")),
    ),
    "food": (
        ("i love pizza.", ("i could eat a large pepperoni every night of the week.",
                           "friday is always pizza night at my place.",
                           "i know every slice shop within five miles.")),
        ("i am a vegetarian.", ("i have not eaten meat in ten years.",
                                "tofu stir fry is my go to dinner, no meat for me.",
                                "bbq parties are tough when you only eat the veggie skewers.")),
        ("my favorite food is steak.", ("nothing beats a medium rare ribeye.",
                                        "i grilled a huge t-bone last night.",
                                        "my birthday dinner is always at the steakhouse.")),
        ("i love sushi.", ("i had the best salmon nigiri of my life last week.",
                           "i can finally use chopsticks properly after all those rolls.",
                           "the conveyor belt place downtown is my happy place.")),
        ("i eat pancakes every morning.", ("i go through a bottle of maple syrup a week.",
                                           "my day does not start until there is a stack on my plate.",
                                           "i flip a batch before work every single day.")),
        ("i cannot live without spicy food.", ("i put hot sauce on literally everything.",
                                               "the hotter the curry the happier i am.",
                                               "i grow my own chili peppers on the balcony.")),
        ("i bake my own bread.", ("my sourdough starter is five years old.",
                                  "kneading dough every sunday is my therapy.",
                                  "store bought loaves never taste right to me anymore.")),
    ),
    "place": (
        ("i live in a big city.", ("the traffic downtown is terrible, so i take the subway.",
                                   "i can see three skyscrapers from my window.",
                                   "the sirens outside never stop around here.")),
        ("i live near the beach.", ("i can hear the waves from my porch every night.",
                                    "i walk along the sand before breakfast.",
                                    "there is always sand in my car from the shore.")),
        ("i live in a small mountain town.", ("we got two feet of snow up here last night.",
                                              "everybody knows everybody in our little valley.",
                                              "the nearest grocery store is an hour down the pass.")),
        ("i grew up on a farm.", ("as a kid i had to milk the cows before school.",
                                  "my childhood was tractors, hay bales and chickens.",
                                  "my folks still grow corn on the land where i was raised.")),
        ("i live in a tiny apartment.", ("my kitchen is basically a hallway with a stove.",
                                         "i can touch both walls of my studio at once.",
                                         "there is no room for a couch in my place.")),
        ("i recently moved to canada.", ("i am still getting used to the winters up north.",
                                         "i just figured out how to pay in loonies and toonies.",
                                         "my new neighbors up here brought me a welcome pie and a hockey stick.")),
        ("i live on a boat.", ("my home rocks gently when the tide comes in.",
                               "i tie up at a new marina every few months.",
                               "living on the water means a very small kitchen.")),
    ),
    "music": (
        ("i play the guitar.", ("i broke another string practicing chords last night.",
                                "my fingertips are all calluses from strumming.",
                                "i am learning a new riff on my acoustic.")),
        ("i love jazz.", ("i saw an amazing saxophone quartet at a club last night.",
                          "miles davis is always on my record player.",
                          "nothing beats a smoky bar with a live trio.")),
        ("i sing in a choir.", ("we have rehearsal tonight for the spring concert.",
                                "i am one of the altos in our group.",
                                "our director wants us to hold that last note forever.")),
        ("i play the drums.", ("my neighbors hate it when i practice my kit.",
                               "i went through two pairs of sticks this week.",
                               "keeping the beat for my band is the best feeling.")),
        ("i listen to country music all day.", ("my radio is stuck on the station with the cowboy songs.",
                                                "i know every word of every dolly parton song.",
                                                "nothing beats a twangy ballad on a long drive.")),
        ("i play the violin.", ("i have been practicing bach on my fiddle for hours.",
                                "i need to buy more rosin for my bow.",
                                "i play second chair in the community orchestra.")),
    ),
    "sport": (
        ("i run marathons.", ("i just did a twenty mile training run this morning.",
                              "my fourth race of twenty six miles is coming up in april.",
                              "i go through running shoes every few months.")),
        ("i like to swim.", ("i did fifty laps at the pool before work.",
                             "my hair always smells like chlorine.",
                             "the lake is my favorite place to do the backstroke.")),
        ("i play soccer on weekends.", ("i scored two goals in our saturday league.",
                                        "my cleats are covered in mud from the game.",
                                        "our team is top of the local league right now.")),
        ("i go rock climbing.", ("my forearms are sore from the bouldering gym.",
                                 "i finally made it up that tricky wall at the crag.",
                                 "chalk bags and harnesses fill my trunk.")),
        ("i love skiing.", ("fresh powder on the slopes is my favorite thing.",
                            "i spent the whole weekend on the black runs.",
                            "i bought a season pass for the mountain again.")),
        ("i do yoga every morning.", ("i start my day with sun salutations on my mat.",
                                      "downward dog is my favorite stretch.",
                                      "my instructor says my balance is getting better.")),
    ),
    "family": (
        ("i have three kids.", ("my oldest just started high school and the twins are in kindergarten.",
                                "school pickup for all my little ones takes forever.",
                                "i pack three lunch boxes every morning.")),
        ("i am an only child.", ("i never had to share my toys growing up.",
                                 "i always wanted a brother or sister but it was just me.",
                                 "my parents only had me, so holidays are quiet.")),
        ("i have a twin sister.", ("people mix me up with my sister all the time, we look identical.",
                                   "we were born four minutes apart.",
                                   "my sister and i share a birthday cake every year.")),
        ("i just got married.", ("we are still writing thank you cards from the wedding.",
                                 "my husband and i got back from our honeymoon last week.",
                                 "i keep staring at my new ring.")),
        ("my parents live with me.", ("my mom cooks dinner for the whole house most nights.",
                                      "dad took over the garage since he moved in with us.",
                                      "having my mom and dad under my roof is nice most days.")),
        ("i have a big family.", ("we need two tables for thanksgiving dinner.",
                                  "i have eleven cousins and five siblings.",
                                  "our family reunions fill a whole park.")),
    ),
    "hobby": (
        ("i collect stamps.", ("i found a rare penny black at a flea market.",
                               "my albums hold about two thousand postage pieces.",
                               "i always ask friends abroad to send me letters for the postage.")),
        ("i like gardening.", ("my tomatoes finally turned red this week.",
                               "i spent all afternoon weeding the flower beds.",
                               "my hands are always covered in soil.")),
        ("i read a book every week.", ("i just finished another novel last night.",
                                       "my library card is my most used card.",
                                       "i have a stack of paperbacks by my bed.")),
        ("i love playing chess.", ("i finally beat my uncle with a queen sacrifice.",
                                   "i play a few blitz games online every night.",
                                   "i have been studying openings like the sicilian.")),
        ("i like to go fishing.", ("i caught a huge trout at the lake on sunday.",
                                   "i was out on the river with my rod at dawn.",
                                   "my tackle box is full of new lures.")),
        ("i build model trains.", ("i laid another ten feet of track in the basement.",
                                   "my miniature steam engine finally runs on its own.",
                                   "i painted tiny trees for my railway layout all weekend.")),
        ("i knit scarves.", ("i finished another woolly one for my neighbor.",
                             "my needles are always clicking in the evening.",
                             "i have baskets of yarn in every color.")),
        ("i do jigsaw puzzles.", ("i just finished a three thousand piece one of a castle.",
                                  "my dining table is covered with pieces again.",
                                  "the edge pieces always go first for me.")),
    ),
}
# fmt: on


def _bank() -> tuple[PersonaFact, ...]:
    hand_written = [PersonaFact(topic, text, hints) for topic, facts in _HAND_WRITTEN.items() for text, hints in facts]
    return tuple(_color_facts() + _drawing_facts() + hand_written)


PERSONA_BANK: tuple[PersonaFact, ...] = _bank()
PERSONA_TOPICS: tuple[str, ...] = tuple(dict.fromkeys(f.topic for f in PERSONA_BANK))

# Facts from different topics that would still contradict each other (or make an odd persona).
CLASHING_FACTS: tuple[tuple[str, str], ...] = (
    ("i am a vegetarian.", "i like to go fishing."),
    ("i live on a boat.", "i own a horse."),
    ("i live in a tiny apartment.", "i own a horse."),
    ("i live in a tiny apartment.", "i have a big family."),
)

_TOPIC_QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("what colors do you like?", "do you have a color you always pick?"),
    "drawing": ("are you into art at all?", "do you draw or paint?"),
    "pet": ("do you have any pets?", "any animals at home?"),
    "job": ("what do you do for work?", "what keeps you busy during the week?"),
    "food": ("what do you like to eat?", "had anything good for dinner lately?"),
    "place": ("where do you live?", "what is it like where you live?"),
    "music": ("are you into music?", "what do you listen to?"),
    "sport": ("do you play any sports?", "how do you stay active?"),
    "family": ("tell me about your family.", "do you have any siblings or kids?"),
    "hobby": ("what do you do for fun?", "any hobbies?"),
}
# What a speaker says back when the partner has just revealed a fact of that topic. Free of every
# hint and persona sentence (tests check), so a follow-up never reveals the responder's own persona.
FOLLOW_UPS: dict[str, tuple[str, ...]] = {
    "color": ("that is such a bold color choice.", "you clearly know what shade you like."),
    "drawing": ("you should show me your art sometime.", "how long have you been into art?"),
    "pet": ("aww, animals make a home so much happier.", "how old is your little buddy?"),
    "job": ("that sounds like a demanding job.", "do you enjoy your line of work?"),
    "food": ("now you are making me hungry.", "that sounds delicious, what is the recipe?"),
    "place": ("that sounds like a nice place to live.", "how long have you been living there?"),
    "music": ("music makes everything better.", "you should play me a tune sometime."),
    "sport": ("you must be in great shape.", "how often do you train?"),
    "family": ("family is everything.", "sounds like a lively household."),
    "hobby": ("that is a great way to spend free time.", "how did you get into that?"),
}
FOLLOW_UP_PROBABILITY = 0.5  # chance a response follows up on the fact the partner just revealed
_GENERIC_QUESTIONS = (
    "how was your day?",
    "what are you up to tonight?",
    "any plans for the weekend?",
    "what is new with you?",
)
_FILLERS = (
    "not much, just relaxing at home.",
    "pretty quiet day so far.",
    "i am just taking it easy today.",
    "nothing special, honestly.",
    "just catching up on some sleep.",
    "same old, same old.",
)
_REACTIONS = ("that is cool.", "oh nice.", "wow, really?", "ha, i see.", "that sounds fun.", "interesting.")
_GREETINGS = ("hi, how are you today?", "hello! how is it going?", "hey there, how are you?")
_GREETING_REPLIES = ("hi! i am good, thanks.", "hello, doing well.", "hey, not bad at all.")


def convai2_tokenize(text: str) -> str:
    """Lower case with punctuation split off by spaces, as in the official ConvAI2 utterances."""
    spaced = re.sub(r"\s*([,.?!])", r" \1", text.lower())
    return " ".join(spaced.split())


def build_dialogues(
    n_episodes: int,
    rng: random.Random,
    n_candidates: int = 20,
    min_turns: int = 4,
    max_turns: int = 8,
) -> list[dict]:
    """``n_episodes`` ConvAI2 episodes for the ``both_original`` writer.

    Each is ``{"your_persona", "partner_persona", "turns", "annotations"}``; a turn is ``{"text":
    partner utterance, "labels": [response], "candidates": n_candidates strings, response last}``,
    distractors drawn from other episodes' responses. ``annotations["revealed"][t]`` lists the
    indices into ``your_persona`` that turn t's response reveals; ``annotations["partner_revealed"]
    [t]`` the indices into ``partner_persona`` that turn t's partner utterance reveals;
    ``annotations["follow_up"][t]`` is the ``partner_persona`` index whose topic the response
    follows up on (with probability ``FOLLOW_UP_PROBABILITY`` when the partner revealed one), else None.
    """
    if n_episodes < 0 or n_candidates < 2 or not 1 <= min_turns <= max_turns:
        raise ValueError(
            f"need n_episodes >= 0, n_candidates >= 2 and 1 <= min_turns <= max_turns; "
            f"got {n_episodes}, {n_candidates}, {min_turns}, {max_turns}"
        )
    episodes = [_episode(rng, rng.randint(min_turns, max_turns)) for _ in range(n_episodes)]
    _attach_candidates(episodes, rng, n_candidates)
    return episodes


def _sample_persona(rng: random.Random, taken: list[PersonaFact]) -> list[PersonaFact]:
    """3–5 facts from distinct topics, none in ``taken`` (the other speaker's), none clashing."""
    persona: list[PersonaFact] = []
    for topic in rng.sample(PERSONA_TOPICS, rng.randint(3, 5)):
        options = [f for f in PERSONA_BANK if f.topic == topic and f not in taken and not _clashes(f, persona)]
        if options:  # every topic has >= 6 facts, so this only fails for contrived banks
            persona.append(rng.choice(options))
    return persona


def _clashes(fact: PersonaFact, persona: list[PersonaFact]) -> bool:
    texts = {p.text for p in persona}
    return any((a == fact.text and b in texts) or (b == fact.text and a in texts) for a, b in CLASHING_FACTS)


def _reveal_schedule(n_facts: int, n_turns: int, rng: random.Random) -> list[int | None]:
    """Per turn, the persona index revealed (or None for small talk); each fact at most once."""
    order = list(range(n_facts))
    rng.shuffle(order)
    slots: list[int | None] = [*order[:n_turns], *([None] * max(0, n_turns - n_facts))]
    rng.shuffle(slots)
    return slots


def _episode(rng: random.Random, n_turns: int) -> dict:
    partner = _sample_persona(rng, [])
    mine = _sample_persona(rng, partner)
    my_slots = _reveal_schedule(len(mine), n_turns, rng)
    partner_slots = _reveal_schedule(len(partner), n_turns, rng)
    turns, revealed, partner_revealed, follow_up = [], [], [], []
    for t in range(n_turns):
        mine_fact = mine[my_slots[t]] if my_slots[t] is not None else None
        partner_fact = partner[partner_slots[t]] if partner_slots[t] is not None else None
        reacted = t > 0 and my_slots[t - 1] is not None  # partner reacts to what self just revealed
        text = _partner_utterance(t, reacted, partner_fact, mine_fact, rng)
        # The follow-up is what the partner persona predicts about the response (issue 18's "their persona").
        follows = partner_fact if partner_fact is not None and rng.random() < FOLLOW_UP_PROBABILITY else None
        response = _self_response(t, partner_fact is not None, follows, mine_fact, rng)
        turns.append({"text": text, "labels": [response], "candidates": []})
        revealed.append([my_slots[t]] if my_slots[t] is not None else [])
        partner_revealed.append([partner_slots[t]] if partner_slots[t] is not None else [])
        follow_up.append(partner_slots[t] if follows is not None else None)
    return {
        "your_persona": [f.text for f in mine],
        "partner_persona": [f.text for f in partner],
        "turns": turns,
        "annotations": {"revealed": revealed, "partner_revealed": partner_revealed, "follow_up": follow_up},
    }


def _partner_utterance(
    t: int, reacted: bool, reveal: PersonaFact | None, asked: PersonaFact | None, rng: random.Random
) -> str:
    """Opening or reaction, then the partner's own hint, then a question steering to ``asked``'s topic."""
    parts = [rng.choice(_GREETINGS)] if t == 0 else [rng.choice(_REACTIONS)] if reacted else []
    if reveal is not None:
        parts.append(rng.choice(reveal.hints))
    if asked is not None:
        parts.append(rng.choice(_TOPIC_QUESTIONS[asked.topic]))
    elif t > 0 or reveal is not None:
        parts.append(rng.choice(_GENERIC_QUESTIONS))
    return convai2_tokenize(" ".join(parts))


def _self_response(
    t: int, partner_revealed: bool, follows: PersonaFact | None, reveal: PersonaFact | None, rng: random.Random
) -> str:
    """Greeting reply, follow-up on ``follows``' topic or a plain reaction, then a hint of ``reveal`` (or a filler)."""
    if follows is not None:
        parts = [rng.choice(FOLLOW_UPS[follows.topic])]
    else:
        parts = [rng.choice(_GREETING_REPLIES)] if t == 0 else [rng.choice(_REACTIONS)] if partner_revealed else []
    parts.append(rng.choice(reveal.hints) if reveal is not None else rng.choice(_FILLERS))
    return convai2_tokenize(" ".join(parts))


def _attach_candidates(episodes: list[dict], rng: random.Random, n_candidates: int) -> None:
    """Fill every turn's candidates: n_candidates - 1 distinct distractors, then the response.

    Distractors are responses from *other* episodes; with too few of those (tiny runs) the rest
    come from the persona bank's hints, which no episode reveals verbatim either.
    """
    pool = [(e, turn["labels"][0]) for e, episode in enumerate(episodes) for turn in episode["turns"]]
    backup = [convai2_tokenize(hint) for fact in PERSONA_BANK for hint in fact.hints]
    for e, episode in enumerate(episodes):
        for turn in episode["turns"]:
            response = turn["labels"][0]
            turn["candidates"] = [*_distractors(pool, backup, e, response, n_candidates - 1, rng), response]


def _distractors(
    pool: list[tuple[int, str]], backup: list[str], episode: int, response: str, k: int, rng: random.Random
) -> list[str]:
    chosen: list[str] = []
    used = {response}
    for _ in range(20 * k):  # rejection sampling; bounded so tiny pools fall through to the backup
        if len(chosen) == k or not pool:
            break
        source, text = pool[rng.randrange(len(pool))]
        if source != episode and text not in used:
            chosen.append(text)
            used.add(text)
    if len(chosen) < k:
        for text in rng.sample(backup, len(backup)):
            if len(chosen) == k:
                break
            if text not in used:
                chosen.append(text)
                used.add(text)
    if len(chosen) < k:
        raise ValueError(f"cannot find {k} distinct distractor candidates")
    return chosen


def revealed_records(episodes: list[dict]) -> list[dict]:
    """The ``{split}_revealed.jsonl`` side-file records of episodes from :func:`build_dialogues`, in order."""
    return [
        {
            "episode": i,
            "your_persona": episode["your_persona"],
            "partner_persona": episode["partner_persona"],
            **{name: episode["annotations"][name] for name in ("revealed", "partner_revealed", "follow_up")},
        }
        for i, episode in enumerate(episodes)
    ]


# --- Dialogue NLI (Welleck et al. 2019) from the persona bank ------------------------------------

# DNLI's relation for each topic (its triples are (subject, relation, object)); the objects are ours.
_RELATIONS = {
    "color": "favorite_color",
    "drawing": "like_activity",
    "pet": "have_pet",
    "job": "has_profession",
    "food": "like_food",
    "place": "live_in_general",
    "music": "like_music",
    "sport": "like_sports",
    "family": "have_family",
    "hobby": "has_hobby",
}
_NO_TRIPLE = ["<none>", "<none>", "<none>"]  # DNLI's triple for an utterance that states no fact
_CLASH_SET = frozenset(CLASHING_FACTS) | frozenset((b, a) for a, b in CLASHING_FACTS)


def contradicts(a: PersonaFact, b: PersonaFact) -> bool:
    """Whether no persona may hold both: two facts of one topic (one favourite colour, one job) or a clash."""
    return a != b and (a.topic == b.topic or (a.text, b.text) in _CLASH_SET)


def fact_triple(fact: PersonaFact) -> list[str]:
    """``["i", relation, object]``; the object is the sentence without its subject ("have a cat")."""
    words = fact.text.rstrip(".").split()
    return ["i", _RELATIONS[fact.topic], " ".join(words[1:] if words[0] in ("i", "my") else words)]


def build_dialogue_nli(n_pairs: int, rng: random.Random) -> list[dict]:
    """``n_pairs`` distinct (utterance, persona sentence) pairs with balanced labels, for a consistency classifier.

    The utterance is a hint of fact f (sometimes after a reaction, greeting reply or follow-up, as
    responses in the dialogues open) or, for some neutral pairs, small talk that states no fact.
    The persona sentence is f itself (``entail``), a fact that contradicts f (``contradict``, see
    :func:`contradicts`) or one unrelated to it (``neutral``). Pairs are the dicts
    ``data.formats.dialogue_nli`` reads and writes, without ``id`` (the writer numbers them).
    """
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    openers = ["", *_REACTIONS, *_GREETING_REPLIES, *(f for phrases in FOLLOW_UPS.values() for f in phrases)]
    seen: set[tuple[str, str]] = set()
    pairs = []
    for k in range(n_pairs):
        for _ in range(200):  # redraw duplicates; the bank holds thousands of distinct pairs per label
            pair = _nli_pair(("entail", "contradict", "neutral")[k % 3], openers, rng)
            if (pair["utterance"], pair["persona"]) not in seen:
                break
        else:
            raise ValueError(f"cannot draw {n_pairs} distinct NLI pairs from the persona bank")
        seen.add((pair["utterance"], pair["persona"]))
        pairs.append(pair)
    rng.shuffle(pairs)
    return pairs


def _nli_pair(label: str, openers: list[str], rng: random.Random) -> dict:
    fact = rng.choice(PERSONA_BANK)
    if label == "neutral" and rng.random() < 0.25:  # small talk entails and contradicts nothing
        utterance, triple1, dtype = rng.choice(_FILLERS + _GENERIC_QUESTIONS), _NO_TRIPLE, "miscutterance_up"
    else:
        utterance, triple1 = f"{rng.choice(openers)} {rng.choice(fact.hints)}", fact_triple(fact)
        dtype = {"entail": "matchingtriple_up", "contradict": "contradiction_up", "neutral": "unrelated_up"}[label]
    if label == "entail":
        persona = fact
    elif label == "contradict":
        persona = rng.choice([f for f in PERSONA_BANK if contradicts(fact, f)])
    else:
        persona = rng.choice([f for f in PERSONA_BANK if f.topic != fact.topic and not contradicts(fact, f)])
    return {
        "utterance": convai2_tokenize(utterance),
        "persona": convai2_tokenize(persona.text),
        "label": label,
        "triple1": list(triple1),
        "triple2": fact_triple(persona),
        "dtype": dtype,
    }


__all__ = [
    "CLASHING_FACTS",
    "FOLLOW_UPS",
    "FOLLOW_UP_PROBABILITY",
    "PERSONA_BANK",
    "PERSONA_TOPICS",
    "PersonaFact",
    "build_dialogue_nli",
    "build_dialogues",
    "contradicts",
    "convai2_tokenize",
    "fact_triple",
    "revealed_records",
]

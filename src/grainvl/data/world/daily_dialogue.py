"""Persona-free everyday dialogues, the world's DailyDialog (Li et al. 2017) analogue.

Persona prediction (arXiv 2111.15093) trains its predictor on PersonaChat and then uses it on
DailyDialog, whose speakers have no persona description. These dialogues play that part: everyday
scenes (a restaurant, the weather, shopping, ...) in DailyDialog's own style, sentence case with
punctuation split off by spaces ("Could we have the bill , please ?"), each utterance labelled
with DailyDialog's dialogue act and emotion codes. About half of them let one speaker mention a
fact of the persona bank in passing ("By the way , I spent all day fixing a bug in our code ."),
so a persona predictor trained on the ConvAI2 set has something to transfer to, in a casing and
context it has not seen.
"""

from __future__ import annotations

import random
import re

from grainvl.data.world.dialogue import PERSONA_BANK

# DailyDialog's label codes (its readme): acts 1-4, emotions 0-6.
INFORM, QUESTION, DIRECTIVE, COMMISSIVE = 1, 2, 3, 4
NO_EMOTION, ANGER, DISGUST, FEAR, HAPPINESS, SADNESS, SURPRISE = range(7)
PERSONA_MENTION_PROBABILITY = 0.5  # chance that a dialogue carries one persona-bank hint
STAY_ON_STORYLINE = 0.8  # chance that a beat keeps to the dialogue's storyline (variety vs. coherence)

Line = tuple[str, int, int]  # (utterance, act, emotion)

# scene -> beats in conversational order; a beat holds two lines, one per storyline. A dialogue
# takes the first beat, an ordered subset of the middle ones and the last.
# fmt: off
_SCENES: dict[str, tuple[tuple[Line, ...], ...]] = {
    "restaurant": (
        (("Good evening , do you have a table for two ?", QUESTION, NO_EMOTION),
         ("Excuse me , could we see the menu , please ?", DIRECTIVE, NO_EMOTION)),
        (("Of course , please follow me .", COMMISSIVE, NO_EMOTION),
         ("Certainly , here you are .", INFORM, NO_EMOTION)),
        (("What would you recommend today ?", QUESTION, NO_EMOTION),
         ("Is the fish fresh today ?", QUESTION, NO_EMOTION)),
        (("The soup of the day is very popular .", INFORM, NO_EMOTION),
         ("Our chef's special is roast chicken with rice .", INFORM, NO_EMOTION)),
        (("Great , I'll have that , please .", DIRECTIVE, HAPPINESS),
         ("Hmm , I think I'll just have a salad .", INFORM, NO_EMOTION)),
        (("This tastes wonderful !", INFORM, HAPPINESS),
         ("Ugh , this soup is cold .", INFORM, DISGUST)),
        (("Could we have the bill , please ?", DIRECTIVE, NO_EMOTION),
         ("Thank you , we had a lovely dinner .", INFORM, HAPPINESS)),
    ),
    "weather": (
        (("What a beautiful day , isn't it ?", QUESTION, HAPPINESS),
         ("It's raining again , I can't believe it .", INFORM, SADNESS)),
        (("Yes , the forecast says it will last all week .", INFORM, NO_EMOTION),
         ("I know , I forgot my umbrella this morning .", INFORM, SADNESS)),
        (("Do you want to go for a walk in the park later ?", QUESTION, NO_EMOTION),
         ("Shall we stay inside and watch a movie instead ?", QUESTION, NO_EMOTION)),
        (("Sure , I'll meet you at five .", COMMISSIVE, HAPPINESS),
         ("Good idea , I'll bring some snacks .", COMMISSIVE, HAPPINESS)),
        (("Don't forget your coat , it gets cold in the evening .", DIRECTIVE, NO_EMOTION),
         ("See you later then .", INFORM, NO_EMOTION)),
    ),
    "shopping": (
        (("Can I help you find anything ?", QUESTION, NO_EMOTION),
         ("Excuse me , where can I find the winter jackets ?", QUESTION, NO_EMOTION)),
        (("I'm looking for a jacket in a medium size .", INFORM, NO_EMOTION),
         ("They are on the second floor , next to the shoes .", INFORM, NO_EMOTION)),
        (("How much is this one ?", QUESTION, NO_EMOTION),
         ("Do you have it in another color ?", QUESTION, NO_EMOTION)),
        (("It's eighty dollars , but it's on sale today .", INFORM, NO_EMOTION),
         ("I'm afraid that's the last one we have .", INFORM, SADNESS)),
        (("Wow , that's a real bargain !", INFORM, SURPRISE),
         ("That's too expensive for me .", INFORM, SADNESS)),
        (("I'll take it . Can I pay by card ?", QUESTION, HAPPINESS),
         ("Thanks anyway , I'll look around a bit more .", INFORM, NO_EMOTION)),
    ),
    "directions": (
        (("Excuse me , how do I get to the train station ?", QUESTION, NO_EMOTION),
         ("Sorry to bother you , is there a post office near here ?", QUESTION, NO_EMOTION)),
        (("Go straight ahead and turn left at the second light .", DIRECTIVE, NO_EMOTION),
         ("It's just around the corner , next to the bank .", INFORM, NO_EMOTION)),
        (("Is it far from here ?", QUESTION, NO_EMOTION),
         ("Can I walk there ?", QUESTION, NO_EMOTION)),
        (("No , it's about a five minute walk .", INFORM, NO_EMOTION),
         ("You had better take a taxi , it's quite far .", DIRECTIVE, NO_EMOTION)),
        (("Thank you so much for your help .", INFORM, HAPPINESS),
         ("Great , thanks a lot !", INFORM, HAPPINESS)),
    ),
    "doctor": (
        (("What seems to be the problem today ?", QUESTION, NO_EMOTION),
         ("Good morning , what brings you here ?", QUESTION, NO_EMOTION)),
        (("I've had a terrible headache for three days .", INFORM, SADNESS),
         ("I have a sore throat and a fever .", INFORM, SADNESS)),
        (("Have you taken any medicine ?", QUESTION, NO_EMOTION),
         ("Did you sleep well last night ?", QUESTION, NO_EMOTION)),
        (("Only some aspirin , but it didn't help .", INFORM, NO_EMOTION),
         ("Not really , I keep waking up .", INFORM, SADNESS)),
        (("Is it something serious , doctor ?", QUESTION, FEAR),
         ("I'm worried it might be the flu .", INFORM, FEAR)),
        (("Don't worry , take these pills twice a day and get some rest .", DIRECTIVE, NO_EMOTION),
         ("It's just a cold . Drink plenty of water .", DIRECTIVE, NO_EMOTION)),
    ),
    "weekend": (
        (("What are you doing this weekend ?", QUESTION, NO_EMOTION),
         ("Do you have any plans for Saturday ?", QUESTION, NO_EMOTION)),
        (("Nothing special , why do you ask ?", QUESTION, NO_EMOTION),
         ("I'm going to visit my grandmother .", INFORM, NO_EMOTION)),
        (("There is a concert in the park , would you like to come ?", QUESTION, HAPPINESS),
         ("Some friends are having a picnic , why don't you join us ?", DIRECTIVE, HAPPINESS)),
        (("I'd love to ! What time does it start ?", QUESTION, HAPPINESS),
         ("Sorry , I promised to help my brother move .", INFORM, SADNESS)),
        (("Let's meet at the gate at noon .", DIRECTIVE, NO_EMOTION),
         ("Maybe next time then .", INFORM, NO_EMOTION)),
    ),
    "office": (
        (("Have you finished the sales report yet ?", QUESTION, NO_EMOTION),
         ("Did you see the email from the manager ?", QUESTION, NO_EMOTION)),
        (("Almost , I need another hour .", INFORM, NO_EMOTION),
         ("No , what did it say ?", QUESTION, SURPRISE)),
        (("The meeting has been moved to three o'clock .", INFORM, NO_EMOTION),
         ("We have to hand everything in by Friday .", INFORM, FEAR)),
        (("That's ridiculous , nobody told me !", INFORM, ANGER),
         ("Okay , I'll let the others know .", COMMISSIVE, NO_EMOTION)),
        (("Please send me the file when you are done .", DIRECTIVE, NO_EMOTION),
         ("I'll have it on your desk this afternoon .", COMMISSIVE, NO_EMOTION)),
    ),
    "apartment": (
        (("I'm calling about the apartment for rent .", INFORM, NO_EMOTION),
         ("Is the flat on Main Street still available ?", QUESTION, NO_EMOTION)),
        (("Yes , it is . Would you like to see it ?", QUESTION, NO_EMOTION),
         ("It is , but several people are interested .", INFORM, NO_EMOTION)),
        (("How much is the rent ?", QUESTION, NO_EMOTION),
         ("Are utilities included ?", QUESTION, NO_EMOTION)),
        (("It's nine hundred a month , heating included .", INFORM, NO_EMOTION),
         ("Water is included , but you pay for electricity .", INFORM, NO_EMOTION)),
        (("That sounds reasonable . Can I come by tomorrow ?", QUESTION, HAPPINESS),
         ("That's more than I expected .", INFORM, SURPRISE)),
    ),
}
# fmt: on
SCENES: tuple[str, ...] = tuple(_SCENES)


def dailydialog_case(text: str) -> str:
    """DailyDialog's surface form: first letter upper case, a lone "i" as "I", punctuation split off by spaces."""
    spaced = " ".join(re.sub(r"\s*([,.?!])", r" \1", text).split())
    spaced = re.sub(r"\bi\b", "I", spaced)
    return spaced[:1].upper() + spaced[1:]


def build_daily_dialogues(n_dialogues: int, rng: random.Random) -> list[dict]:
    """``n_dialogues`` dialogues as the DailyDialog reader returns them: ``{"turns", "acts", "emotions"}``.

    Each has 4-7 utterances from one scene, mostly following one of its two storylines. With
    probability ``PERSONA_MENTION_PROBABILITY`` one middle utterance is replaced by a persona-bank
    hint after "By the way ," (act inform, no emotion).
    """
    if n_dialogues < 0:
        raise ValueError(f"n_dialogues must be >= 0, got {n_dialogues}")
    return [_daily_dialogue(rng) for _ in range(n_dialogues)]


def _daily_dialogue(rng: random.Random) -> dict:
    beats = _SCENES[rng.choice(SCENES)]
    middle = sorted(rng.sample(range(1, len(beats) - 1), rng.randint(2, min(5, len(beats) - 2))))
    storyline = rng.randrange(2)  # beats list two lines each; keeping to one mostly keeps the replies fitting
    picks = [storyline if rng.random() < STAY_ON_STORYLINE else 1 - storyline for _ in beats]
    lines = [beats[b][picks[b]] for b in (0, *middle, len(beats) - 1)]
    if rng.random() < PERSONA_MENTION_PROBABILITY:
        hint = rng.choice(rng.choice(PERSONA_BANK).hints)
        lines[rng.randrange(1, len(lines) - 1)] = (dailydialog_case(f"by the way , {hint}"), INFORM, NO_EMOTION)
    return {
        "turns": [text for text, _, _ in lines],
        "acts": [a for _, a, _ in lines],
        "emotions": [e for _, _, e in lines],
    }


__all__ = ["SCENES", "build_daily_dialogues", "dailydialog_case"]

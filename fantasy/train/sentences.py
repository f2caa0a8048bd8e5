"""Short English sentences for synthetic speech, drawn from a small grammar (deterministic by the generator).

The word lists cover closed lips (p b m), wide vowels, rounded and spread lips, so every viseme class
appears often; the sentences need not make sense, only sound like speech.
"""

from __future__ import annotations

import numpy as np

SUBJECTS = ("the man", "my mother", "a baby", "the pilot", "our boss", "the farmer", "a poor boy", "Bob",
            "Mary", "the team", "my father", "the woman", "a bird", "the queen", "Paul", "the maid")
VERBS = ("bought", "moved", "opened", "painted", "wanted", "found", "watched", "carried", "pushed", "liked",
         "brought", "cooked", "kept", "fixed", "took", "chose", "played", "needed", "mopped", "grabbed")
ADJECTIVES = ("big", "blue", "warm", "old", "shiny", "small", "purple", "heavy", "cheap", "wooden", "broken",
              "fresh", "quiet", "open", "happy", "pale", "bright", "smooth", "sharp", "soft")
OBJECTS = ("apple", "boat", "box", "map", "piano", "window", "book", "pie", "mop", "spoon", "bottle", "pear",
           "umbrella", "cup", "rope", "ball", "jam", "pumpkin", "bomb", "wheel", "orange", "moon")
PLACES = ("at home", "by the sea", "in the park", "on Monday", "before noon", "in May", "at the market",
          "on the bus", "by the pool", "in the bath", "at the top", "near the barn", "every morning", "up the hill")


def sentence(rng: np.random.Generator) -> str:
    """One sentence of 5-11 words, e.g. 'Bob bought a shiny pear by the sea.'"""
    words = [str(rng.choice(SUBJECTS)), str(rng.choice(VERBS))]
    noun = str(rng.choice(OBJECTS))
    if rng.random() < 0.6:
        noun = f"{rng.choice(ADJECTIVES)} {noun}"
    article = "an" if noun[0] in "aeiou" else "a"
    words.append(f"{rng.choice(['the', article])} {noun}")
    if rng.random() < 0.6:
        words.append(str(rng.choice(PLACES)))
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."

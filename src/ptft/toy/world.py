"""The toy world: a small lexicon whose relations define every toy task.

Each toy task is a pure function of a few words drawn from this lexicon, so a model of a
few million parameters can learn it on a CPU within minutes:

- NLI: the hypothesis restates the premise's adjective (entailment), negates it
  (contradiction) or names another one (neutral).
- paraphrase (PAWS-like): a paraphrase swaps in a synonym verb; a non-paraphrase also
  negates the sentence ("never") or swaps the two people, so who does what to whom changes.
- summary: the summary restates who did what to which thing where, in a fixed frame.
- question generation: the question asks for the answer marked A (who, what or where).

Two domains share the grammar but not the nouns: ``home`` (household things, the in-domain
sets) and ``wild`` (animals and nature, the out-of-domain sets).
"""

from __future__ import annotations

NAMES = (
    "anna ben carl dora eli finn gina hugo ivy jack kate leo mia nora otto pia rosa sam tina uma vera will zack lily"
).split()

OBJECTS = {
    "home": "cup box hat lamp book bag bell chair clock coat spoon plate vase rug key".split(),
    "wild": "fox owl wolf bear deer frog hawk crab goat duck mole seal swan toad wasp".split(),
}

PLACES = {
    "home": "kitchen garden garage attic hall cellar porch shed".split(),
    "wild": "forest river valley meadow marsh cliff cave lake".split(),
}

# Adjective scales: (positive pole, negative pole). Words on one pole entail each other.
ADJ_SCALES = {
    "size": ("big large huge".split(), "small tiny little".split()),
    "heat": ("hot warm".split(), "cold cool".split()),
    "speed": ("fast quick".split(), "slow sluggish".split()),
    "light": ("bright shiny".split(), "dark dim".split()),
    "age": ("old ancient".split(), "new fresh".split()),
    "weight": ("heavy weighty".split(), "light airy".split()),
    "sound": ("loud noisy".split(), "quiet silent".split()),
    "clean": ("clean tidy".split(), "dirty messy".split()),
}

# Verbs in the third person (``sees``) whose base form drops the final ``s`` (``see``).
VERB_GROUPS = (
    "sees spots notices".split(),
    "likes loves enjoys".split(),
    "takes grabs picks".split(),
    "makes builds forms".split(),
    "finds discovers locates".split(),
    "helps aids supports".split(),
    "paints draws sketches".split(),
    "kicks hits strikes".split(),
)

MOODS = "happy sad calm tired proud bored".split()
COLORS = "red blue green grey pink gold".split()
TIMES = "morning noon evening night".split()

NLI_LABELS = ("entailment", "neutral", "contradiction")
YES_NO = ("no", "yes")


def adjective_pole(word: str) -> tuple[str, int]:
    """(scale, polarity) of an adjective; polarity 0 is the positive pole."""
    for scale, poles in ADJ_SCALES.items():
        for polarity, words in enumerate(poles):
            if word in words:
                return scale, polarity
    raise KeyError(f"not a toy adjective: {word!r}")


def nli_label(adj_premise: str, adj_hypothesis: str) -> int:
    """Index into NLI_LABELS of the relation between two adjectives."""
    scale_p, pol_p = adjective_pole(adj_premise)
    scale_h, pol_h = adjective_pole(adj_hypothesis)
    if scale_p != scale_h:
        return NLI_LABELS.index("neutral")
    return NLI_LABELS.index("entailment" if pol_p == pol_h else "contradiction")


def verb_group(verb: str) -> int:
    for i, group in enumerate(VERB_GROUPS):
        if verb in group:
            return i
    raise KeyError(f"not a toy verb: {verb!r}")


def base_form(verb: str) -> str:
    return verb[:-2] if verb.endswith(("ches", "shes")) else verb[:-1]


ALL_ADJECTIVES = tuple(w for poles in ADJ_SCALES.values() for pole in poles for w in pole)
ALL_VERBS = tuple(v for group in VERB_GROUPS for v in group)

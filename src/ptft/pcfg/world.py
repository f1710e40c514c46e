"""The PCFG world: tasks on grammar texts, the vocabulary, records, batches and dataset splits.

A sample is ``<sos> T O O′ <sot> text <eot> <art> answer <eos>`` (Jain et al., ICLR 2024): T a task token,
O an operand (a terminal), O′ a second operand that fixes the task's parameter, the text a window of
``window`` grammar terminals. The tasks read the text's tail:

- ``count``: occurrences of O in the last O′ = ``count_window`` tokens;
- ``count_pair``: positions i of the last ``count_window`` tokens with text[i] = O and text[i+1] = O′
  (O′ = O: the pair "aa"; overlapping pairs count, so "a a a" holds 2);
- ``index``: the position, counted from the end (1 = the last text token), of the O′ = ``occurrence``-th
  occurrence of O counted from the end; no answer if O occurs fewer times;
- ``token_at``: the token at position O′ = ``offset`` counted the same way (text[-offset]); O is written
  but does not matter.

Every PCFG dataset shares one label set, :func:`answer_words` (the numbers 0..window, then the terminals), so
a model fine-tuned on one task is scored on another with the same labels. A record also holds its task's
answer for every operand (``answer_a``, ``answer_b``, ``answer_c``): the targets of probes asking whether a
model computes the pre-training answer or the fine-tuning one.

Spurious records (Jain et al.'s fine-tuning data with a spurious correlation) are texts on which the answer
for b is the answer for a plus one. Such texts can be rare (about 1 in 5,000 windows of 250 tokens for some
grammars), so they are not redrawn one window at a time: a stretch of the grammar's stream is generated,
every window of it is scored at once (numpy), and one qualifying window is chosen uniformly. The texts are
then windows of the stream conditioned on the correlation, as the plain records are windows of it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ptft.pcfg.grammar import TERMINALS, Grammar, expand, make_grammar, sample_text

SPECIALS = ("<pad>", "<sos>", "<eos>", "<sot>", "<eot>", "<art>")
COLUMNS = ("prompt", "answer", "label", "task", "operand", "spurious", "answer_a", "answer_b", "answer_c")
SPLITS = ("train", "validation", "test")

# Plain records: texts redrawn until the task has an answer (index needs enough occurrences).
_MAX_DRAWS = 10_000
# Spurious records: the first stretch of stream scored, the longest stretch, the windows scored before giving up
# (a few seconds).
_FIRST_STRETCH = 512
_MAX_GROW = 1 << 16
_MAX_WINDOWS = 4_000_000
# Consecutive duplicate prompts tolerated while filling a dataset split.
_MAX_DUPLICATES = 1000


@dataclass(frozen=True)
class World:
    """The grammar's settings and the tasks' parameters (defaults: Jain et al.'s)."""

    grammar_seed: int = 0
    levels: int = 4
    per_level: int = 4
    rules: int = 2
    rhs: tuple[int, int] = (2, 3)
    window: int = 250
    count_window: int = 40
    occurrence: int = 6
    offset: int = 40

    @classmethod
    def from_config(cls, cfg: Mapping | None, where: str = "checkpoints.pcfg.world") -> World:
        """The world of a config block ``{grammar: {seed, levels, per_level, rules, rhs}, window, count_window,
        occurrence, offset}`` (every key optional); raises ValueError naming a bad key."""
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"grammar", "window", "count_window", "occurrence", "offset"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        grammar = dict(cfg.get("grammar") or {})
        unknown = set(grammar) - {"seed", "levels", "per_level", "rules", "rhs"}
        if unknown:
            raise ValueError(f"{where}.grammar: unknown keys {sorted(unknown)}")
        d = cls()
        values = {
            "grammar.seed": grammar.get("seed", d.grammar_seed),
            "grammar.levels": grammar.get("levels", d.levels),
            "grammar.per_level": grammar.get("per_level", d.per_level),
            "grammar.rules": grammar.get("rules", d.rules),
            "window": cfg.get("window", d.window),
            "count_window": cfg.get("count_window", d.count_window),
            "occurrence": cfg.get("occurrence", d.occurrence),
            "offset": cfg.get("offset", d.offset),
        }
        for key, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{where}.{key}: {value!r} is not an integer")
            if key != "grammar.seed" and value < 1:
                raise ValueError(f"{where}.{key}: {value} must be at least 1")
        for key in ("count_window", "occurrence", "offset"):
            if values[key] > values["window"]:
                raise ValueError(f"{where}.{key}: {values[key]} exceeds window {values['window']}")
        rhs = grammar.get("rhs", d.rhs)
        if (
            not isinstance(rhs, list | tuple)
            or len(rhs) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in rhs)
            or not 1 <= rhs[0] <= rhs[1]
        ):
            raise ValueError(f"{where}.grammar.rhs: {rhs!r} is not [shortest, longest] with 1 <= shortest <= longest")
        return cls(
            grammar_seed=values["grammar.seed"],
            levels=values["grammar.levels"],
            per_level=values["grammar.per_level"],
            rules=values["grammar.rules"],
            rhs=(rhs[0], rhs[1]),
            window=values["window"],
            count_window=values["count_window"],
            occurrence=values["occurrence"],
            offset=values["offset"],
        )

    def build_grammar(self) -> Grammar:
        return _grammar(self.grammar_seed, self.levels, self.per_level, self.rules, self.rhs)

    @property
    def terminals(self) -> tuple[str, ...]:
        return TERMINALS

    @property
    def prompt_length(self) -> int:
        """Tokens of a prompt: ``<sos> T O O′ <sot>``, the text, ``<eot> <art>``."""
        return self.window + 7

    @property
    def sample_length(self) -> int:
        """Tokens of a whole sample: the prompt, the answer and ``<eos>``."""
        return self.prompt_length + 2


@functools.lru_cache(maxsize=8)
def _grammar(seed: int, levels: int, per_level: int, rules: int, rhs: tuple[int, int]) -> Grammar:
    return make_grammar(seed, levels, per_level, rules, rhs)


# --- tasks --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """``answer(world, text, operand)``: the answer word, None where the text has none.
    ``answers_at(world, codes, operand)`` (numeric tasks): the answer (an int, -1 for none) of every window of
    ``world.window`` tokens of a stream of terminal codes, window j being ``codes[j : j + window]``."""

    name: str
    token: str
    operand2: Callable[[World, str], str]
    answer: Callable[[World, Sequence[str], str], str | None]
    answers_at: Callable[[World, np.ndarray, str], np.ndarray] | None = None

    @property
    def numeric(self) -> bool:
        return self.answers_at is not None


def _count(world: World, text: Sequence[str], operand: str) -> str:
    return str(list(text[-world.count_window :]).count(operand))


def _count_pair(world: World, text: Sequence[str], operand: str) -> str:
    second = _pair_second(world, operand)
    n = len(text)
    return str(sum(1 for i in range(n - world.count_window, n - 1) if text[i] == operand and text[i + 1] == second))


def _index(world: World, text: Sequence[str], operand: str) -> str | None:
    left = world.occurrence
    for back in range(1, len(text) + 1):
        if text[-back] == operand:
            left -= 1
            if left == 0:
                return str(back)
    return None


def _token_at(world: World, text: Sequence[str], operand: str) -> str:
    return text[-world.offset]


def _pair_second(world: World, operand: str) -> str:
    # Jain et al.'s count_pair asks for "aa": the pair's second operand is the first one again.
    return operand


def _ends(world: World, codes: np.ndarray) -> np.ndarray:
    """The (exclusive) end of every window of the stream."""
    return np.arange(world.window, len(codes) + 1)


def _cumulative(mask: np.ndarray) -> np.ndarray:
    out = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask, out=out[1:])
    return out


def _count_at(world: World, codes: np.ndarray, operand: str) -> np.ndarray:
    seen = _cumulative(codes == _code(operand))
    ends = _ends(world, codes)
    return seen[ends] - seen[ends - world.count_window]


def _count_pair_at(world: World, codes: np.ndarray, operand: str) -> np.ndarray:
    pairs = _cumulative((codes[:-1] == _code(operand)) & (codes[1:] == _code(_pair_second(world, operand))))
    ends = _ends(world, codes)
    # Pairs starting at i = end - count_window .. end - 2: both tokens inside the count window.
    return pairs[ends - 1] - pairs[ends - world.count_window]


def _index_at(world: World, codes: np.ndarray, operand: str) -> np.ndarray:
    hits = codes == _code(operand)
    positions = np.flatnonzero(hits)
    ends = _ends(world, codes)
    if len(positions) == 0:
        return np.full(len(ends), -1, dtype=np.int64)
    which = _cumulative(hits)[ends] - world.occurrence
    back = ends - positions[np.clip(which, 0, None)]
    return np.where((which >= 0) & (back <= world.window), back, -1)


def _code(terminal: str) -> int:
    return ord(terminal)


def _codes(stream: Sequence[str]) -> np.ndarray:
    # The terminals are single ASCII letters: their bytes are their codes.
    return np.frombuffer("".join(stream).encode("ascii"), dtype=np.uint8)


TASKS: dict[str, Task] = {
    "count": Task("count", "<count>", lambda w, o: str(w.count_window), _count, _count_at),
    "count_pair": Task("count_pair", "<count_pair>", _pair_second, _count_pair, _count_pair_at),
    "index": Task("index", "<index>", lambda w, o: str(w.occurrence), _index, _index_at),
    "token_at": Task("token_at", "<token_at>", lambda w, o: str(w.offset), _token_at),
}


# --- vocabulary ---------------------------------------------------------------------------------------------


def answer_words(world: World) -> tuple[str, ...]:
    """Every possible answer, the label set of every PCFG dataset: "0".."{window}", then the terminals."""
    return _answer_words(world.window)


@functools.lru_cache(maxsize=8)
def _answer_words(window: int) -> tuple[str, ...]:
    return tuple(str(n) for n in range(window + 1)) + TERMINALS


@functools.lru_cache(maxsize=8)
def _label_of(window: int) -> dict[str, int]:
    return {word: i for i, word in enumerate(_answer_words(window))}


def label(world: World, answer: str | None) -> int:
    """The index of ``answer`` in :func:`answer_words`; -1 for no answer."""
    return -1 if answer is None else _label_of(world.window)[answer]


def vocabulary(world: World) -> list[str]:
    """The special tokens, the task tokens, the terminals and the number words, each once."""
    words = [*SPECIALS, *(t.token for t in TASKS.values()), *answer_words(world)]
    return list(dict.fromkeys(words))


def prompt_text(world: World, task: str, operand: str, text: Sequence[str]) -> str:
    """``<sos> T O O′ <sot> text <eot> <art>``, space separated; the answer follows after a space."""
    t = TASKS[task]
    return f"<sos> {t.token} {operand} {t.operand2(world, operand)} <sot> {' '.join(text)} <eot> <art>"


# --- records ------------------------------------------------------------------------------------------------


def check_weights(weights: Mapping[str, float], allowed: Sequence[str], where: str) -> dict[str, float]:
    """The positive entries of a weight table; raises ValueError naming ``where`` on a bad one."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"{where}: {weights!r} is not a non-empty mapping of weights")
    for name, weight in weights.items():
        if name not in allowed:
            raise ValueError(f"{where}: unknown entry {name!r}; known: {list(allowed)}")
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not weight >= 0:
            raise ValueError(f"{where}.{name}: {weight!r} is not a non-negative number")
    positive = {name: float(w) for name, w in weights.items() if w > 0}
    if not positive:
        raise ValueError(f"{where}: every weight is 0")
    return positive


def _plain_text(world: World, grammar: Grammar, rng: random.Random, task: Task, operand: str) -> list[str]:
    for _ in range(_MAX_DRAWS):
        text = sample_text(grammar, rng, world.window)
        if task.answer(world, text, operand) is not None:
            return text
    raise ValueError(
        f"task {task.name}: no text of {world.window} tokens with an answer for operand {operand!r} in "
        f"{_MAX_DRAWS} draws (e.g. fewer than occurrence={world.occurrence} {operand!r}s); lower the world's setting"
    )


def _spurious_text(world: World, grammar: Grammar, rng: random.Random, task: Task, operand: str) -> list[str]:
    """A window on which the answer for b is the answer for a plus one (and ``operand`` has an answer)."""
    if not task.numeric:
        raise ValueError(f"task {task.name}: a spurious correlation needs a numeric answer")
    # One stream, extended (by doubling stretches) until some window qualifies, each window scored once: the
    # stretch scored holds the last window - 1 tokens before it, so the windows that straddle into it count.
    # A window chosen uniformly among the qualifying windows of the stretch is one chosen among those of the
    # whole stream, since the earlier stretches held none.
    carry: list[str] = []
    grow, scored = max(_FIRST_STRETCH, 4 * world.window), 0
    while scored < _MAX_WINDOWS:
        stream = carry + expand(grammar, rng, grow)
        codes = _codes(stream)
        a, b = task.answers_at(world, codes, "a"), task.answers_at(world, codes, "b")
        ok = (a >= 0) & (b == a + 1)
        if operand not in ("a", "b"):
            ok &= task.answers_at(world, codes, operand) >= 0
        starts = np.flatnonzero(ok)
        if len(starts):
            start = int(starts[int(rng.random() * len(starts))])
            return stream[start : start + world.window]
        scored += len(ok)
        carry = stream[len(stream) - world.window + 1 :]
        grow = min(2 * grow, _MAX_GROW)
    raise ValueError(
        f"task {task.name}: no window of {world.window} tokens with answer_b == answer_a + 1 among {scored} "
        f"windows of the grammar (seed {world.grammar_seed}); this grammar rarely produces the correlation"
    )


def sample_record(
    world: World, grammar: Grammar, rng: random.Random, task: str, operand: str, spurious: bool = False
) -> dict:
    """One record: ``prompt``, ``answer``, ``label``, ``task``, ``operand``, ``spurious``, and the labels of this
    task's answer on this text for each operand, ``answer_a``, ``answer_b``, ``answer_c`` (-1: no answer)."""
    if task not in TASKS:
        raise ValueError(f"unknown PCFG task {task!r}; known: {list(TASKS)}")
    if operand not in world.terminals:
        raise ValueError(f"operand {operand!r} is not a terminal {world.terminals}")
    t = TASKS[task]
    text = (_spurious_text if spurious else _plain_text)(world, grammar, rng, t, operand)
    answer = t.answer(world, text, operand)
    record = {
        "prompt": prompt_text(world, task, operand, text),
        "answer": answer,
        "label": label(world, answer),
        "task": task,
        "operand": operand,
        "spurious": bool(spurious),
    }
    for o in world.terminals:
        record[f"answer_{o}"] = label(world, t.answer(world, text, o))
    return record


def sample_batch(
    world: World,
    grammar: Grammar,
    rng: random.Random,
    batch_size: int,
    tasks: Mapping[str, float],
    prior: Mapping[str, float],
    spurious: float = 0.0,
) -> list[dict]:
    """``batch_size`` records, each of a task drawn by the ``tasks`` weights and an operand drawn by ``prior``
    (zero-weight and absent operands are never drawn), spurious with probability ``spurious``."""
    task_w = check_weights(tasks, list(TASKS), "tasks")
    prior_w = check_weights(prior, world.terminals, "prior")
    if not 0 <= spurious <= 1:
        raise ValueError(f"spurious: {spurious!r} is not a probability")
    if spurious > 0 and not all(TASKS[name].numeric for name in task_w):
        raise ValueError(f"spurious: {spurious} needs numeric tasks only; tasks: {list(task_w)}")
    names, weights = list(task_w), list(task_w.values())
    operands, op_weights = list(prior_w), list(prior_w.values())
    records = []
    for _ in range(batch_size):
        task = rng.choices(names, weights)[0]
        operand = rng.choices(operands, op_weights)[0]
        records.append(sample_record(world, grammar, rng, task, operand, spurious > 0 and rng.random() < spurious))
    return records


# --- datasets -----------------------------------------------------------------------------------------------


def dataset_rng(seed: int, task: str, operand: str, spurious: float) -> random.Random:
    """The generator of a dataset's records: a function of its spec, not its name, so equal specs give equal
    records (str seeds are hashed with SHA-512: stable across processes)."""
    return random.Random(f"pcfg:{seed}:{task}:{operand}:{float(spurious)!r}")


def check_spec(world: World, spec: Mapping, where: str = "spec") -> tuple[str, str, float]:
    unknown = set(spec) - {"task", "operand", "spurious"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    task, operand, spurious = spec.get("task"), spec.get("operand"), spec.get("spurious", 0.0)
    if task not in TASKS:
        raise ValueError(f"{where}.task: {task!r} is not a PCFG task {list(TASKS)}")
    if operand not in world.terminals:
        raise ValueError(f"{where}.operand: {operand!r} is not a terminal {list(world.terminals)}")
    if not isinstance(spurious, int | float) or isinstance(spurious, bool) or not 0 <= spurious <= 1:
        raise ValueError(f"{where}.spurious: {spurious!r} is not a fraction in [0, 1]")
    if spurious > 0 and not TASKS[task].numeric:
        raise ValueError(f"{where}.spurious: task {task} has no numeric answer to correlate")
    return task, operand, float(spurious)


def generate_splits(world: World, spec: Mapping, sizes: Mapping[str, int], seed: int) -> dict[str, list[dict]]:
    """The records of each split, distinct by prompt within and across splits, drawn in the order train,
    validation, test (so a split's records do not depend on the sizes of the later ones)."""
    task, operand, spurious = check_spec(world, spec)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"sizes: unknown splits {sorted(unknown)}; known: {list(SPLITS)}")
    grammar = world.build_grammar()
    rng = dataset_rng(seed, task, operand, spurious)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split in (s for s in SPLITS if s in sizes):
        size = sizes[split]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"sizes.{split}: {size!r} is not a non-negative integer")
        records: list[dict] = []
        duplicates = 0
        while len(records) < size:
            record = sample_record(world, grammar, rng, task, operand, spurious > 0 and rng.random() < spurious)
            if record["prompt"] in seen:
                duplicates += 1
                if duplicates > _MAX_DUPLICATES:
                    raise ValueError(
                        f"sizes.{split}: only {len(records)} of {size} distinct records after {_MAX_DUPLICATES} "
                        f"duplicate draws in a row; the world (window {world.window}) has too few texts"
                    )
                continue
            duplicates = 0
            seen.add(record["prompt"])
            records.append(record)
        splits[split] = records
    return splits


def write_dataset(world: World, spec: Mapping, sizes: Mapping[str, int], seed: int, out_dir: str | Path) -> None:
    """``out_dir/<split>.parquet`` for each split of ``sizes``: the records of ``spec = {task, operand,
    spurious}`` (columns: :data:`COLUMNS`), each file written atomically."""
    import pandas as pd

    from ptft import io

    splits = generate_splits(world, spec, sizes, seed)
    origin = {"pcfg": {"world": asdict(world), "spec": dict(spec), "seed": seed}}
    for split, records in splits.items():
        io.write_parquet(Path(out_dir) / f"{split}.parquet", pd.DataFrame(records, columns=list(COLUMNS)), origin)

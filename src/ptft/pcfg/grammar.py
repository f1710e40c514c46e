"""A random probabilistic context-free grammar in the style of Allen-Zhu & Li, and fast text sampling.

Nonterminals sit in levels: a level-0 symbol (a start symbol) expands into symbols of level 1, and so on;
the last level expands into terminals. Every nonterminal has the same number of rules, chosen uniformly.
Jain et al. use 4 levels of 4 nonterminals with 2 rules each (32 rules) over the terminals a, b, c.

Samples are drawn by the million during pre-training, and spurious fine-tuning texts need thousands of windows
scored each, so :func:`sample_text` is fast (about 0.04 µs a token): every nonterminal whose whole expansions
fit a table of 8,192 entries (in Jain et al.'s grammar, all but the start symbols) is expanded by one uniform
pick from it, each expansion repeated in proportion to its probability; the levels above use an explicit stack.
The grammar must be levelled (acyclic), as :func:`make_grammar`'s are.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from itertools import chain, product

TERMINALS = ("a", "b", "c")

# Largest table of whole expansions of a nonterminal (entries): 2 rules of 3 children of 16 expansions fit.
_MAX_TABLE = 1 << 13
# Redraws of a grammar that cannot produce every terminal; a handful suffice in practice.
_MAX_DRAWS = 1000


@dataclass(frozen=True)
class Grammar:
    """``rules``: nonterminal -> its right-hand sides; ``start``: the level-0 symbols; ``terminals``."""

    rules: dict[str, tuple[tuple[str, ...], ...]]
    start: tuple[str, ...]
    terminals: tuple[str, ...]
    # The sampler's form: per nonterminal id, (expansions, right-hand sides): ``expansions`` a table of whole
    # terminal expansions to pick from uniformly (None if too large to tabulate), the right-hand sides as ids
    # reversed for a stack otherwise.
    _compiled: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = {name: i for i, name in enumerate(self.rules)}
        tables: dict[str, list[tuple[str, ...]] | None] = {}

        def table(name: str) -> list[tuple[str, ...]] | None:
            if name not in tables:
                tables[name] = _expansion_table(self.rules[name], self.rules, table)
            return tables[name]

        compiled = []
        for name, rhss in self.rules.items():
            children = tuple(tuple(ids[s] for s in reversed(rhs) if s in ids) for rhs in rhss)
            expansions = table(name)
            if expansions is None and any(s not in ids for rhs in rhss for s in rhs):
                raise ValueError(f"rules of {name} mix terminals and nonterminals too deep to tabulate")
            compiled.append((None if expansions is None else tuple(expansions), children))
        object.__setattr__(self, "_compiled", (tuple(compiled), tuple(ids[s] for s in self.start)))

    def reachable_terminals(self) -> set[str]:
        """The terminals some expansion of a start symbol produces."""
        seen, todo, found = set(), list(self.start), set()
        while todo:
            sym = todo.pop()
            if sym in seen:
                continue
            seen.add(sym)
            for rhs in self.rules[sym]:
                for s in rhs:
                    (todo.append if s in self.rules else found.add)(s)
        return found


def make_grammar(
    seed: int, levels: int = 4, per_level: int = 4, rules: int = 2, rhs: tuple[int, int] = (2, 3)
) -> Grammar:
    """A grammar of ``levels`` × ``per_level`` nonterminals with ``rules`` right-hand sides each, of lengths
    drawn from ``rhs[0]..rhs[1]``; deterministic in ``seed``.

    A draw that leaves a terminal unreachable is redrawn (from the same generator, so still deterministic):
    the counting tasks need every operand to occur.
    """
    if levels < 1 or per_level < 1 or rules < 1 or not 1 <= rhs[0] <= rhs[1]:
        raise ValueError(
            f"need levels, per_level, rules >= 1 and 1 <= rhs[0] <= rhs[1]; got levels={levels}, "
            f"per_level={per_level}, rules={rules}, rhs={rhs}"
        )
    rng = random.Random(seed)
    names = [[f"L{level}_{i}" for i in range(per_level)] for level in range(levels)]
    for _ in range(_MAX_DRAWS):
        table: dict[str, tuple[tuple[str, ...], ...]] = {}
        for level in range(levels):
            below = names[level + 1] if level + 1 < levels else TERMINALS
            for name in names[level]:
                table[name] = tuple(
                    tuple(rng.choice(below) for _ in range(rng.randint(rhs[0], rhs[1]))) for _ in range(rules)
                )
        grammar = Grammar(rules=table, start=tuple(names[0]), terminals=TERMINALS)
        if grammar.reachable_terminals() == set(TERMINALS):
            return grammar
    raise ValueError(f"no grammar of seed {seed} produces every terminal in {_MAX_DRAWS} draws")


def _expansion_table(rhss, rules, table) -> list[tuple[str, ...]] | None:
    """Every expansion of a nonterminal with right-hand sides ``rhss``, each repeated so that a uniform pick from
    the list has the grammar's probability; None if a symbol has no table or the list would exceed
    ``_MAX_TABLE``. ``table(name)`` is the list of a nonterminal."""
    per_rule = []
    for rhs in rhss:
        parts = [[(s,)] if s not in rules else table(s) for s in rhs]
        if any(p is None for p in parts) or math.prod(len(p) for p in parts) > _MAX_TABLE:
            return None
        per_rule.append([tuple(chain.from_iterable(combo)) for combo in product(*parts)])
    # Rules are equally likely: repeat each rule's expansions to a common count.
    common = math.lcm(*(len(e) for e in per_rule))
    if common * len(per_rule) > _MAX_TABLE:
        return None
    return [x for e in per_rule for _ in range(common // len(e)) for x in e]


def expand(grammar: Grammar, rng: random.Random, length: int) -> list[str]:
    """Expansions of uniformly chosen start symbols, concatenated until at least ``length`` terminals."""
    compiled, starts = grammar._compiled
    rand = rng.random
    n_start = len(starts)
    out: list[str] = []
    extend = out.extend
    while len(out) < length:
        stack = [starts[int(rand() * n_start)]]
        pop, push = stack.pop, stack.extend
        while stack:
            expansions, children = compiled[pop()]
            if expansions is not None:
                extend(expansions[int(rand() * len(expansions))])
            else:
                push(children[int(rand() * len(children))])
    return out


def sample_text(grammar: Grammar, rng: random.Random, length: int) -> list[str]:
    """A window of ``length`` terminals at a uniformly random offset of concatenated grammar expansions."""
    out = expand(grammar, rng, length)
    start = int(rng.random() * (len(out) - length + 1))
    return out[start : start + length]

"""The built-in task: arithmetic word problems from templates, with exact integer answers, no download.

A problem's identity is its arithmetic, ``(operation, operands)``, not its wording: "Ann has 3 pens and gets 4
more" and "A shelf holds 3 books; 4 are added" are the same problem ``add(3, 4)``. Which split a problem belongs
to is a pure function of that identity (:func:`split_of`, a SHA-256 hash), so no test or validation problem
can appear in the training set, not even reworded, and the split does not depend on the sizes or the seed.
A validation split (``val_fraction`` > 0) takes its share from what was training; the test problems stay the
same, and with ``val_fraction = 0`` (no validation) train and test are exactly as before it existed. Within a split,
problems are distinct. The same ``(split, size, seed)`` always gives the same examples.

Responses show the arithmetic and end with "The answer is N." (``answers.extract_answer`` reads N).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from dualadam.tasks.llm.errors import LLMConfigError
from dualadam.tasks.llm.examples import Example, split_of_identity

SPLITS = ("train", "val", "test")
NAMES = ("Ann", "Ben", "Carla", "Dev", "Emma", "Farid", "Gita", "Hugo", "Ines", "Jon", "Kemal", "Lena", "Mo",
         "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor", "Wen", "Yara", "Zoe")
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "coins",
         "oranges", "buttons", "beads", "tickets", "eggs", "flowers")
CONTAINERS = ("boxes", "bags", "baskets", "jars", "packs", "crates", "trays", "bowls")
MAX_CONSECUTIVE_MISSES = 10_000  # draws without a new problem before a split counts as exhausted


@dataclass(frozen=True)
class Problem:
    operation: str                 # a key of OPERATIONS
    operands: tuple[int, ...]

    @property
    def identity(self) -> str:
        return f"{self.operation}:{','.join(map(str, self.operands))}"


@dataclass(frozen=True)
class Operation:
    draw: Callable[[random.Random], tuple[int, ...]]   # operands, so that the answer is a whole number >= 0
    answer: Callable[[tuple[int, ...]], int]
    working: Callable[[tuple[int, ...]], str]          # the arithmetic the response shows, e.g. "3 + 4 = 7"
    templates: tuple[str, ...]                         # str.format fields: a, b, c, name, name2, item, box


def _sub_operands(rng: random.Random) -> tuple[int, ...]:
    return tuple(sorted(rng.sample(range(2, 100), 2), reverse=True))  # distinct, so the answer is >= 1


def _div_operands(rng: random.Random) -> tuple[int, ...]:
    divisor, quotient = rng.randint(2, 12), rng.randint(2, 20)
    return (divisor * quotient, divisor)


def _mul_sub_operands(rng: random.Random) -> tuple[int, ...]:
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    return (a, b, rng.randint(1, a * b - 1))


OPERATIONS: dict[str, Operation] = {
    "add": Operation(
        draw=lambda rng: (rng.randint(2, 99), rng.randint(2, 99)),
        answer=lambda o: o[0] + o[1],
        working=lambda o: f"{o[0]} + {o[1]} = {o[0] + o[1]}",
        templates=(
            "{name} has {a} {item}. {name2} gives {name} {b} more. How many {item} does {name} have now?",
            "A shelf holds {a} {item}. Then {b} more {item} are put on it. How many {item} are on the shelf?",
            "{name} collected {a} {item} on Monday and {b} {item} on Tuesday. How many {item} in total?",
        ),
    ),
    "sub": Operation(
        draw=_sub_operands,
        answer=lambda o: o[0] - o[1],
        working=lambda o: f"{o[0]} - {o[1]} = {o[0] - o[1]}",
        templates=(
            "{name} had {a} {item} and gave {b} of them to {name2}. How many {item} does {name} have left?",
            "There were {a} {item} in a basket. {name} took {b}. How many {item} are still in the basket?",
            "{name} needs {a} {item} and already has {b}. How many more {item} does {name} need?",
        ),
    ),
    "mul": Operation(
        draw=lambda rng: (rng.randint(2, 12), rng.randint(2, 20)),
        answer=lambda o: o[0] * o[1],
        working=lambda o: f"{o[0]} * {o[1]} = {o[0] * o[1]}",
        templates=(
            "There are {a} {box} with {b} {item} in each. How many {item} are there in total?",
            "{name} buys {a} {box} of {item}. Each holds {b} {item}. How many {item} does {name} buy?",
        ),
    ),
    "div": Operation(
        draw=_div_operands,
        answer=lambda o: o[0] // o[1],
        working=lambda o: f"{o[0]} / {o[1]} = {o[0] // o[1]}",
        templates=(
            "{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
            "{a} {item} are packed into {b} {box}, the same number in each. How many {item} per box?",
        ),
    ),
    "mul_sub": Operation(
        draw=_mul_sub_operands,
        answer=lambda o: o[0] * o[1] - o[2],
        working=lambda o: f"{o[0]} * {o[1]} - {o[2]} = {o[0] * o[1]} - {o[2]} = {o[0] * o[1] - o[2]}",
        templates=(
            "{name} has {a} {box} with {b} {item} each and gives away {c} {item}. How many {item} are left?",
        ),
    ),
}


def split_of(problem: Problem, test_fraction: float, val_fraction: float = 0.0) -> str:
    """``"test"`` for a fixed ``test_fraction`` of all problems, ``"val"`` for a further ``val_fraction``,
    ``"train"`` for the rest, chosen by a hash of the problem's identity (``examples.split_of_identity``)."""
    return split_of_identity(problem.identity, test_fraction, val_fraction)


def render(problem: Problem, rng: random.Random) -> Example:
    """Word the problem with a random template and names; the response shows the working and the answer."""
    operation = OPERATIONS[problem.operation]
    template = rng.choice(operation.templates)
    name, name2 = rng.sample(NAMES, 2)
    fields = dict(zip("abc", problem.operands))
    prompt = template.format(name=name, name2=name2, item=rng.choice(ITEMS), box=rng.choice(CONTAINERS), **fields)
    answer = str(operation.answer(problem.operands))
    return Example(prompt=prompt, response=f"{operation.working(problem.operands)}. The answer is {answer}.",
                   answer=answer)


def draw_problems(split: str, size: int, seed: int, test_fraction: float = 0.2,
                  val_fraction: float = 0.0) -> list[tuple[Problem, Example]]:
    """``size`` distinct problems of ``split`` ("train", "val" or "test") with their wording, reproducible from
    ``seed``."""
    if split not in SPLITS:
        raise LLMConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    if not 0 < test_fraction < 1:
        raise LLMConfigError(f"dataset.test_fraction={test_fraction!r} must be in (0, 1)")
    if not 0 <= val_fraction < 1 - test_fraction:
        raise LLMConfigError(f"dataset.val_fraction={val_fraction!r} must be in [0, 1 - test_fraction)")
    rng = random.Random(f"arithmetic/{split}/{seed}")  # string seeds hash with SHA-512: stable across runs
    seen: set[str] = set()
    drawn: list[tuple[Problem, Example]] = []
    misses = 0  # rejection sampling; a long run of misses means the split has no more new problems
    while len(drawn) < size and misses < MAX_CONSECUTIVE_MISSES:
        name = rng.choice(sorted(OPERATIONS))
        problem = Problem(name, OPERATIONS[name].draw(rng))
        if problem.identity in seen or split_of(problem, test_fraction, val_fraction) != split:
            misses += 1
            continue
        misses = 0
        seen.add(problem.identity)
        drawn.append((problem, render(problem, rng)))
    if len(drawn) == size:
        return drawn
    raise LLMConfigError(f"Could not draw {size} distinct {split} problems (got {len(drawn)}); "
                         f"lower dataset.{split}_size (the task has about 18,000 problems in all, "
                         f"split by dataset.test_fraction and dataset.val_fraction).")


def arithmetic_problems(split: str, size: int, seed: int, test_fraction: float = 0.2,
                        val_fraction: float = 0.0) -> list[Example]:
    """The examples of :func:`draw_problems`."""
    return [example for _, example in draw_problems(split, size, seed, test_fraction, val_fraction)]

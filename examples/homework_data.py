"""The unit-conversion homework's data: a seeded generator of its questions, and its own data files.

The course homework fine-tunes SmolLM2-360M-Instruct with LoRA on `[question, answer]` rows such as
`["Can you change 2 hour to its equivalent in min?", 120.0]`. This recipe module (beside the example, not in the
package) holds:

- `generate_rows` / `homework_splits`: a seeded generator of homework-style questions (no data files needed);
- `load_homework_data`: the homework's own `train.json` / `valid.json`;
- `write_homework_data`: generated rows written as such files, for the CLI recipe or `--data-dir`;
- `measure_statistics` / `write_statistics`: how often the homework's files ask each conversion, spell each unit,
  use each amount and phrasing, kept in `homework_statistics.json`, which the generator draws from:

    python examples/homework_data.py --out outputs/homework_data   # train.json (1000 rows) + valid.json (1000 rows)
    python examples/homework_data.py --fit path/to/homework/data   # measure homework_statistics.json again
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from trl_masked_sft import DatasetFormatError

__all__ = [
    "QUESTION_TEMPLATES",
    "ConversionQuestion",
    "convert",
    "generate_examples",
    "generate_rows",
    "homework_splits",
    "homework_statistics",
    "load_homework_data",
    "measure_statistics",
    "parse_question",
    "write_homework_data",
]

# ---------------------------------------------------------------------------------------------------- units

_GALLON = 3.785411784  # litres (US liquid gallon)
_YEAR = 365.24219878125 * 86400  # seconds (mean tropical year, as the homework's data uses)
_MILE = 1609.344  # metres

#: family -> canonical unit -> (size in the family's base unit, spellings used in questions).
_UNITS: dict[str, dict[str, tuple[float, tuple[str, ...]]]] = {
    "length": {
        "m": (1.0, ("m", "meter")),
        "cm": (0.01, ("cm",)),
        "mm": (0.001, ("mm",)),
        "km": (1000.0, ("km",)),
        "in": (0.0254, ("in",)),
        "ft": (0.3048, ("ft",)),
        "yd": (0.9144, ("yd",)),
        "mi": (_MILE, ("mi", "miles")),
    },
    "mass": {
        "kg": (1.0, ("kg",)),
        "g": (0.001, ("g", "gram")),
        "lb": (0.45359237, ("pound",)),
        "oz": (0.45359237 / 16, ("ounce",)),
        "t": (1000.0, ("ton", "tonne", "metric ton")),
    },
    "time": {
        "s": (1.0, ("s", "sec", "second", "seconds")),
        "min": (60.0, ("min", "minute")),
        "h": (3600.0, ("h", "hour", "hours")),
        "day": (86400.0, ("day", "days")),
        "week": (604800.0, ("week", "weeks")),
        "month": (_YEAR / 12, ("month", "months")),
        "year": (_YEAR, ("year", "years")),
        "decade": (10 * _YEAR, ("decade", "decades")),
        "century": (100 * _YEAR, ("century", "centuries")),
    },
    "volume": {
        "l": (1.0, ("l", "L", "liter", "litre")),
        "ml": (0.001, ("ml", "mL", "milliliter", "millilitre", "cc", "cm^3", "cm**3")),
        "mm3": (1e-6, ("mm^3", "mm**3")),
        "m3": (1000.0, ("m^3", "m**3")),
        "gal": (_GALLON, ("gallon",)),
        "qt": (_GALLON / 4, ("quart",)),
        "pt": (_GALLON / 8, ("pint",)),
        "floz": (_GALLON / 128, ("fluid ounce", "ounce")),
    },
    "data size": {
        "B": (1.0, ("B", "byte")),
        "bit": (0.125, ("bit",)),
        "kB": (1e3, ("kB", "KB")),
        "MB": (1e6, ("MB", "M")),
        "GB": (1e9, ("GB", "G")),
    },
    "speed": {
        "m/s": (1.0, ("m/s",)),
        "ft/s": (0.3048, ("ft/s",)),
        "in/s": (0.0254, ("in/s",)),
        "km/h": (1 / 3.6, ("km/h", "kmh")),
        "mph": (_MILE / 3600, ("mph", "mi/h")),
    },
}

#: The phrasings of the homework's questions; `{n}` is the amount, `{a}` the unit converted from, `{b}` the unit
#: converted to.
QUESTION_TEMPLATES: tuple[str, ...] = (
    "Can you change {n} {a} to its equivalent in {b}?",
    "Can you provide the conversion value from {a} to {b} for {n} units?",
    "Convert the measurement of {n} {a} into {b}.",
    "Convert {n} {a} to {b}?",
    "Could you convert {n} {a} to its corresponding value in {b}?",
    "Could you give the conversion from {a} to {b} for {n} units?",
    "Could you provide the value of {n} {a} in {b}?",
    "Express {n} {a} as a quantity of {b}.",
    "How do we express {n} {a} in terms of {b}?",
    "How do we translate {n} {a} into {b}?",
    "How does {n} {a} measure up in terms of {b}?",
    "How many {b} are there per {n} {a}?",
    "How many {b} is {n} {a}?",
    "How many {b} make up {n} {a}?",
    "How much is {n} {a} when converted to {b}?",
    "Please convert {n} {a} into {b}.",
    "Tell me how many {b} are there in {n} {a}.",
    "What does {n} {a} equal in {b} terms?",
    "What is the conversion from {a} to {b} for {n} units?",
    "What is the conversion of {n} {a} to {b}?",
    "What is the equivalent of {n} {a} in {b}?",
    "What is the measurement of {n} {a} when converted into {b}?",
    "What is {n} {a} in {b}?",
)

_SPELLINGS: dict[str, list[tuple[str, float]]] = {}
for _family, _units in _UNITS.items():
    for _size, _names in _units.values():
        for _name in _names:
            _SPELLINGS.setdefault(_name, []).append((_family, _size))


class ConversionQuestion(NamedTuple):
    """One generated homework question and how it was built."""

    question: str
    amount: int
    from_unit: str
    to_unit: str
    family: str
    answer: float


def convert(amount: float, from_unit: str, to_unit: str) -> float:
    """Convert `amount` from `from_unit` to `to_unit`, both spelled as in the homework (e.g. `"mi/h"`, `"cm^3"`).

    A spelling used by two families (`"ounce"`: mass, or fluid ounce by volume) takes the family of the other unit.
    Raises `ValueError` for an unknown spelling or units of different families.
    """
    for name in (from_unit, to_unit):
        if name not in _SPELLINGS:
            raise ValueError(
                f"Unknown unit {name!r}. Use one of the homework's spellings, e.g. {sorted(_SPELLINGS)[:8]} ..."
            )
    sizes_to = dict(_SPELLINGS[to_unit])
    for family, size_from in _SPELLINGS[from_unit]:
        if family in sizes_to:
            return amount * size_from / sizes_to[family]
    raise ValueError(
        f"Cannot convert {from_unit!r} ({', '.join(f for f, _ in _SPELLINGS[from_unit])}) to {to_unit!r} "
        f"({', '.join(f for f, _ in _SPELLINGS[to_unit])}): the units measure different things."
    )


_STATISTICS_FILE = Path(__file__).resolve().with_name("homework_statistics.json")
_TEMPLATE_PATTERNS: list[tuple[str, re.Pattern]] = []


def _template_patterns() -> list[tuple[str, re.Pattern]]:
    if not _TEMPLATE_PATTERNS:
        for template in QUESTION_TEMPLATES:
            pattern = re.escape(template)
            for name, group in (("n", r"(?P<n>\d+)"), ("a", r"(?P<a>.+?)"), ("b", r"(?P<b>.+?)")):
                pattern = pattern.replace(re.escape("{" + name + "}"), group)
            _TEMPLATE_PATTERNS.append((template, re.compile(f"^{pattern}$")))
    return _TEMPLATE_PATTERNS


def _unit_of(spelling: str, other: str) -> tuple[str, str]:
    """`(family, canonical unit)` of `spelling`, in the family it shares with `other` (`"ounce"` by `"g"`: mass)."""
    families = {family for family, _ in _SPELLINGS.get(other, [])}
    for family, _ in _SPELLINGS.get(spelling, []):
        if family in families:
            return family, next(unit for unit, (_, names) in _UNITS[family].items() if spelling in names)
    raise ValueError(f"Cannot read the units {spelling!r} and {other!r} as one conversion: unknown or mixed units.")


def parse_question(question: str) -> tuple[str, int, str, str]:
    """`(template, amount, from spelling, to spelling)` of a homework question; `ValueError` when no template fits."""
    for template, pattern in _template_patterns():
        match = pattern.match(question)
        if match:
            return template, int(match["n"]), match["a"], match["b"]
    raise ValueError(f"{question[:80]!r} matches none of the homework's phrasings (`QUESTION_TEMPLATES`).")


def measure_statistics(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The statistics `generate_examples` draws from, measured on homework rows `[question, answer]`.

    `{"rows": n, "pairs": {"family|from|to": count}, "spellings": {"from|family|unit": {spelling: count}, "to|…": …},
    "amounts": {"1": count, …}, "templates": {template: count}}`: how often each conversion is asked, how each unit
    is spelt where it is converted from and where it is converted to, how often each amount and phrasing appears.
    """
    pairs: Counter = Counter()
    spellings: dict[str, Counter] = {}
    amounts: Counter = Counter()
    templates: Counter = Counter({t: 0 for t in QUESTION_TEMPLATES})
    for question, _ in rows:
        template, amount, name_a, name_b = parse_question(question)
        family, a = _unit_of(name_a, name_b)
        _, b = _unit_of(name_b, name_a)
        pairs[f"{family}|{a}|{b}"] += 1
        spellings.setdefault(f"from|{family}|{a}", Counter())[name_a] += 1
        spellings.setdefault(f"to|{family}|{b}", Counter())[name_b] += 1
        amounts[str(amount)] += 1
        templates[template] += 1
    return {
        "rows": len(rows),
        "pairs": dict(sorted(pairs.items())),
        "spellings": {key: dict(sorted(counts.items())) for key, counts in sorted(spellings.items())},
        "amounts": dict(sorted(amounts.items(), key=lambda item: int(item[0]))),
        "templates": dict(templates),
    }


def homework_statistics() -> dict[str, Any]:
    """The statistics of the homework's train.json and valid.json (2000 rows), kept in `homework_statistics.json`
    beside this module (written by `python examples/homework_data.py --fit DATA_DIR`)."""
    if not _CACHE:
        _CACHE.update(json.loads(_STATISTICS_FILE.read_text(encoding="utf-8")))
    return _CACHE


_CACHE: dict[str, Any] = {}


def generate_examples(n: int, seed: int = 0) -> list[ConversionQuestion]:
    """`n` homework-style questions, the same for the same `seed` on every machine and Python version.

    Each question draws, from the homework files' statistics (`homework_statistics.json`, see `measure_statistics`),
    a conversion (family and the two units: e.g. GB to MB is asked 87 times in 2000 rows, gallon to pint twice), a
    spelling of each unit as the files spell it in that place (`"kg"` or `"metric ton"`...), an amount (1 to 10) and a
    phrasing (`QUESTION_TEMPLATES`), each with the frequency it has in the files. The answer is computed
    (`convert`). The questions are drawn, not copied: the files hold 2000 rows; the draws range over 93,840 distinct questions.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"`n` must be a non-negative int (the number of questions), got {n!r}.")
    stats = homework_statistics()
    pairs = [key.split("|") for key in stats["pairs"]]
    pair_weights = list(stats["pairs"].values())
    amounts = [int(a) for a in stats["amounts"]]
    amount_weights = list(stats["amounts"].values())
    template_weights = [stats["templates"][t] for t in QUESTION_TEMPLATES]
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        family, a, b = rng.choices(pairs, pair_weights)[0]
        from_names = stats["spellings"][f"from|{family}|{a}"]
        to_names = dict(stats["spellings"][f"to|{family}|{b}"])
        name_a = rng.choices(list(from_names), list(from_names.values()))[0]
        if a == b:  # a change of spelling only (cc to mL): never the same spelling twice
            to_names = {name: count for name, count in to_names.items() if name != name_a} or to_names
        name_b = rng.choices(list(to_names), list(to_names.values()))[0]
        amount = rng.choices(amounts, amount_weights)[0]
        question = rng.choices(QUESTION_TEMPLATES, template_weights)[0].format(n=amount, a=name_a, b=name_b)
        size_a, size_b = _UNITS[family][a][0], _UNITS[family][b][0]
        examples.append(ConversionQuestion(question, amount, name_a, name_b, family, amount * size_a / size_b))
    return examples


def generate_rows(n: int, seed: int = 0) -> list[list[Any]]:
    """`n` homework rows `[question: str, answer: float]` (see `generate_examples`)."""
    return [[example.question, example.answer] for example in generate_examples(n, seed)]


def homework_splits(
    n_train: int = 1000, n_valid: int = 1000, seed: int = 0
) -> tuple[list[list[Any]], list[list[Any]]]:
    """Generated `(train, valid)` rows, the homework's 1000 + 1000 by default. One seeded stream, split in two."""
    rows = generate_rows(n_train + n_valid, seed)
    return rows[:n_train], rows[n_train:]


# ---------------------------------------------------------------------------------------------------- data files


def _read_split(path: Path) -> list[list[Any]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"No homework data file at {path}. Fix: point `data_dir` (--data-dir) at the folder that holds the "
            "homework's train.json and valid.json, or leave it out to use generated questions."
        )
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(
            f"{path} is not valid JSON ({error}). Fix: restore the homework's original file, a JSON list of "
            "[question, answer] rows."
        ) from error
    if not isinstance(rows, list) or not rows:
        raise DatasetFormatError(
            f"{path} must hold a non-empty JSON list of [question, answer] rows, got "
            f"{type(rows).__name__} {str(rows)[:60]!r}. Fix: restore the homework's original file."
        )
    for i, row in enumerate(rows):
        ok = (
            isinstance(row, list)
            and len(row) == 2
            and isinstance(row[0], str)
            and isinstance(row[1], (int, float))
            and not isinstance(row[1], bool)
            and math.isfinite(row[1])
        )
        if not ok:
            raise DatasetFormatError(
                f"Row {i} of {path} is {str(row)[:80]!r}; every row must be [question: str, answer: number]. Fix "
                "that row or restore the homework's original file."
            )
    return [[question, float(answer)] for question, answer in rows]


def load_homework_data(data_dir: str | Path) -> tuple[list[list[Any]], list[list[Any]]]:
    """`(train, valid)` rows read from `data_dir`/train.json and `data_dir`/valid.json (the homework's files).

    Each file is a JSON list of `[question, answer]` rows. Raises `FileNotFoundError` naming the missing path, and
    `DatasetFormatError` naming the file and row when the content is not such a list.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"Homework data folder {data_dir} does not exist. Fix: pass the folder that holds train.json and "
            "valid.json (e.g. the homework's data/ folder), or leave --data-dir out to use generated questions."
        )
    return _read_split(data_dir / "train.json"), _read_split(data_dir / "valid.json")


def write_homework_data(out_dir: str | Path, n_train: int = 1000, n_valid: int = 1000, seed: int = 0) -> Path:
    """Write generated rows (`homework_splits`) as `out_dir`/train.json and `out_dir`/valid.json, in the homework's
    format (a JSON list of `[question, answer]` rows), so `load_homework_data` and the CLI read them back."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(("train", "valid"), homework_splits(n_train, n_valid, seed), strict=True):
        (out / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def write_statistics(data_dir: str | Path, out: str | Path = _STATISTICS_FILE) -> Path:
    """Measure the statistics of `data_dir`'s train.json and valid.json (`measure_statistics`) and write them to
    `out` (by default the `homework_statistics.json` the generator reads)."""
    train, valid = load_homework_data(data_dir)
    out = Path(out)
    out.write_text(json.dumps(measure_statistics(train + valid), indent=1) + "\n", encoding="utf-8")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write generated homework rows as train.json and valid.json, or measure the homework files' "
        "statistics that the generator draws from."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", help="Folder to write train.json and valid.json into.")
    action.add_argument(
        "--fit",
        metavar="DATA_DIR",
        help=f"The homework's data folder: measure its files' statistics into {_STATISTICS_FILE.name}.",
    )
    parser.add_argument("--train", type=int, default=1000, help="Train rows (the homework's 1000).")
    parser.add_argument("--valid", type=int, default=1000, help="Valid rows (the homework's 1000).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the generated questions.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.fit:
        out = write_statistics(args.fit)
        print(f"Wrote the statistics of {args.fit}'s train.json and valid.json to {out}.")
        return out
    out = write_homework_data(args.out, args.train, args.valid, args.seed)
    print(f"Wrote {args.train} train and {args.valid} valid rows to {out}/train.json and {out}/valid.json.")
    return out


if __name__ == "__main__":
    main()

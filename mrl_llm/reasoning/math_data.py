"""Math reasoning datasets (MATH500, AIME 2024/2025, AMC 2023, GSM8K) with one schema.

The evaluation sets of MRT (Qu et al. 2025, arXiv 2503.07572, §7). Every loader returns a
``datasets.Dataset`` with the string columns

- ``problem``: the problem statement;
- ``answer``: the bare reference answer, ready for
  :func:`mrl_llm.reasoning.verifier.verify_answer` (GSM8K: the text after ``####`` without
  thousands commas; MATH: the ``answer`` field, else the last ``\\boxed{}`` of
  ``solution``; numbers such as AMC's ``27.0`` rendered ``"27"``);
- ``source``: the dataset name (``"math500"``, ...);
- ``id``: the source's id (``unique_id`` / ``id`` / ``idx``), else the row index.

Example:
    >>> ds = load_math_dataset("gsm8k", path="data/math_eval", limit=8)  # doctest: +SKIP
    >>> ds[0]["answer"], ds.column_names
    ('18', ['problem', 'answer', 'source', 'id'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets

from mrl_llm.reasoning.verifier import extract_answer


@dataclass(frozen=True)
class _HubSource:
    repo: str
    config: str | None
    split: str
    max_year: int | None = None  # drop rows of later contests (a "Year"/"year" column)


# Hub sources, used when no local path is given.
HUB_SOURCES: dict[str, _HubSource] = {
    "math500": _HubSource("HuggingFaceH4/MATH-500", None, "test"),
    "aime24": _HubSource("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": _HubSource("yentinglin/aime_2025", None, "train"),
    "amc23": _HubSource("math-ai/amc23", None, "test"),
    "gsm8k": _HubSource("openai/gsm8k", "main", "test"),
    # training problems (MRT's R1-Distill run used 4,000 of them); answers = last \boxed{} of solution
    "numinamath": _HubSource("AI-MO/NuminaMath-CoT", None, "train"),
    # MRT's DeepScaleR run trained on AIME problems before 2024 (919 of them in the authors' upload
    # active-reasoning/AIME); the year filter keeps AIME 2024, an evaluation set, out.
    "aime_1983_2023": _HubSource("di-zhang-fdu/AIME_1983_2024", None, "train", max_year=2023),
}
KNOWN_DATASETS = tuple(HUB_SOURCES)

_PROBLEM_COLUMNS = ("problem", "question", "Problem", "Question")
_ANSWER_COLUMNS = ("answer", "Answer")
_SOLUTION_COLUMNS = ("solution", "Solution")
_ID_COLUMNS = ("unique_id", "id", "idx", "ID")
_YEAR_COLUMNS = ("Year", "year")


def _render_answer(value) -> str:
    """A reference answer as a string: integral floats lose their ``.0`` (27.0 -> "27")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _gsm8k_answer(text: str) -> str | None:
    """GSM8K's final answer: after the last ``####``, thousands commas removed."""
    pos = text.rfind("####")
    if pos < 0:
        return None
    return text[pos + 4 :].strip().replace(",", "") or None


def _first_present(columns, candidates) -> str | None:
    return next((c for c in candidates if c in columns), None)


def _normalize(raw: datasets.Dataset, name: str, origin: str) -> datasets.Dataset:
    """Map a raw dataset onto the uniform (problem, answer, source, id) schema.

    Raises:
        KeyError: a needed column is missing (names the column and ``origin``).
        ValueError: a row has no extractable answer (names the row and ``origin``).
    """
    cols = raw.column_names
    problem_col = _first_present(cols, _PROBLEM_COLUMNS)
    if problem_col is None:
        raise KeyError(f"{origin}: no problem column (looked for {list(_PROBLEM_COLUMNS)}); columns are {cols}")
    answer_col = _first_present(cols, _ANSWER_COLUMNS)
    solution_col = _first_present(cols, _SOLUTION_COLUMNS)
    if name == "gsm8k":
        if answer_col is None:
            raise KeyError(f"{origin}: missing column 'answer' (GSM8K solution ending in '#### N'); columns are {cols}")
        answer_fn = _gsm8k_answer
    elif answer_col is not None:
        answer_fn = _render_answer
    elif solution_col is not None:
        answer_col, answer_fn = solution_col, extract_answer
    else:
        raise KeyError(
            f"{origin}: missing column 'answer' (and no 'solution' to take a \\boxed{{}} answer from); "
            f"columns are {cols}"
        )
    id_col = _first_present(cols, _ID_COLUMNS)

    problems, answers, ids = raw[problem_col], raw[answer_col], raw[id_col] if id_col else None
    out_answers = []
    for i, value in enumerate(answers):
        ans = answer_fn(value) if value is not None else None
        if not ans:
            raise ValueError(f"{origin}: row {i} has no answer in column {answer_col!r}: {str(value)[:200]!r}")
        out_answers.append(ans)
    features = datasets.Features({k: datasets.Value("string") for k in ("problem", "answer", "source", "id")})
    return datasets.Dataset.from_dict(
        {
            "problem": [str(p) for p in problems],
            "answer": out_answers,
            "source": [name] * len(problems),
            "id": [str(x) for x in ids] if ids is not None else [str(i) for i in range(len(problems))],
        },
        features=features,
    )


def load_math_dataset(
    name: str, path: str | None = None, split: str | None = None, limit: int | None = None
) -> datasets.Dataset:
    """Load a math evaluation set with columns ``problem``, ``answer``, ``source``, ``id``.

    Sources without ``path`` (hub, via ``datasets.load_dataset``):

    ========  ===========================  ======  =====
    name      repo                         config  split
    ========  ===========================  ======  =====
    math500   HuggingFaceH4/MATH-500       -       test
    aime24    HuggingFaceH4/aime_2024      -       train
    aime25    yentinglin/aime_2025         -       train
    amc23     math-ai/amc23                -       test
    gsm8k     openai/gsm8k                 main    test
    numinamath  AI-MO/NuminaMath-CoT       -       train
    aime_1983_2023  di-zhang-fdu/AIME_1983_2024  -  train (rows with Year <= 2023)
    ========  ===========================  ======  =====

    ``aime_1983_2023`` (training problems of MRT's DeepScaleR run) keeps only rows whose
    ``Year`` (or ``year``) is at most 2023, from the hub or a local file alike, so AIME 2024,
    an evaluation set, never leaks into training; ``limit`` applies after that filter.

    With ``path``, a local JSON-lines file is read with ``datasets.load_dataset("json")``
    (``split`` defaults to ``"train"``, the only split of a JSON file; slices such as
    ``"train[:10]"`` work). Accepted rows: the hub schemas above and the common exports of
    them — a problem in ``problem`` or ``question``; an answer in ``answer`` (string or
    number) or, failing that, the last ``\\boxed{}`` of ``solution`` (these column names
    also capitalised, as in ``Maxwell-Jia/AIME_2024``);
    GSM8K rows with ``question`` and an ``answer`` solution ending in ``#### N``; an id in
    ``unique_id``, ``id``, ``idx`` or ``ID``. Other columns are dropped.

    Args:
        name (str): one of ``KNOWN_DATASETS`` (case-insensitive).
        path (str | None): a ``.jsonl`` file, or a directory holding ``<name>.jsonl``.
        split (str | None): dataset split; default as in the table / ``"train"`` locally.
        limit (int | None): keep only the first ``limit`` rows.

    Returns:
        datasets.Dataset: string columns ``problem``, ``answer``, ``source`` (= ``name``,
        lower-cased), ``id``.

    Raises:
        ValueError: unknown ``name`` (lists the known ones), negative ``limit``, or a row
            without an answer.
        FileNotFoundError: ``path`` (or ``<path>/<name>.jsonl``) does not exist.
        KeyError: the data lack a needed column (the message names file and column).
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in HUB_SOURCES:
        raise ValueError(f"unknown math dataset {name!r}; known: {list(KNOWN_DATASETS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if path is not None:
        file = Path(path)
        if file.is_dir():
            file = file / f"{key}.jsonl"
        if not file.is_file():
            raise FileNotFoundError(f"math dataset {key!r}: no such file {str(file)!r}")
        raw = datasets.load_dataset("json", data_files=str(file), split=split or "train")
        origin = str(file)
    else:
        src = HUB_SOURCES[key]
        raw = datasets.load_dataset(src.repo, src.config, split=split or src.split)
        origin = f"hub dataset {src.repo}" + (f" ({src.config})" if src.config else "")
    max_year = HUB_SOURCES[key].max_year
    if max_year is not None:
        year_col = _first_present(raw.column_names, _YEAR_COLUMNS)
        if year_col is None:
            raise KeyError(
                f"{origin}: {key} needs a year column ({list(_YEAR_COLUMNS)}) to keep contests up to "
                f"{max_year}; columns are {raw.column_names}"
            )
        raw = raw.filter(lambda year: int(year) <= max_year, input_columns=year_col)
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))
    return _normalize(raw, key, origin)


__all__ = ["load_math_dataset", "KNOWN_DATASETS", "HUB_SOURCES"]

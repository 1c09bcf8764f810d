"""Math dataset loaders (mrl_llm.reasoning.math_data) on small local files in the formats of the
common exports; hub loading is checked with a stubbed ``datasets.load_dataset`` (no network)."""

from __future__ import annotations

import json

import datasets
import pytest

from mrl_llm.reasoning.math_data import load_math_dataset
from mrl_llm.reasoning.math_data import KNOWN_DATASETS

COLUMNS = ["problem", "answer", "source", "id"]

MATH500_ROWS = [
    {
        "problem": "Convert $(0,3)$ to polar coordinates.",
        "solution": r"So it is $\boxed{\left( 3, \frac{\pi}{2} \right)}.$",
        "answer": r"\left( 3, \frac{\pi}{2} \right)",
        "subject": "Precalculus",
        "level": 2,
        "unique_id": "test/precalculus/807.json",
    },
    {
        "problem": "Who wins?",
        "solution": r"$\boxed{\text{Evelyn}}$",
        "answer": r"\text{Evelyn}",
        "subject": "Algebra",
        "level": 2,
        "unique_id": "test/algebra/924.json",
    },
    {
        "problem": "Compute $1+1$.",
        "solution": r"It is \boxed{2}.",
        "answer": "2",
        "subject": "Prealgebra",
        "level": 1,
        "unique_id": "test/prealgebra/1.json",
    },
]
AIME24_ROWS = [
    {
        "id": 60,
        "problem": "Every morning Aya goes for a walk...",
        "solution": r"... $\framebox{204}$ minutes",
        "answer": "204",
        "url": "https://example.org/1",
        "question": "Every morning Aya goes for a walk...",
    },
    {
        "id": 61,
        "problem": "Let $ABC$ be a triangle...",
        "solution": "...",
        "answer": "113",
        "url": "https://example.org/2",
        "question": "Let $ABC$ be a triangle...",
    },
]
AMC23_ROWS = [
    {
        "id": 0,
        "problem": "Cities $A$ and $B$ are $45$ miles apart...",
        "answer": 27.0,
        "url": "u",
        "question": "Cities...",
    },
    {"id": 1, "problem": "Positive reals with $y^3=x^2$...", "answer": 36.0, "url": "u", "question": "Positive..."},
    {"id": 2, "problem": "A ratio?", "answer": 1.5, "url": "u", "question": "A ratio?"},
]
GSM8K_ROWS = [
    {
        "question": "Janet's ducks lay 16 eggs per day...",
        "answer": "She sells 16 - 3 - 4 = <<16-3-4=9>>9.\n#### 18",
        "idx": 0,
    },
    {
        "question": "Josh flips a house...",
        "answer": "200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70,000",
        "idx": 1,
    },
    {"question": "Too many?", "answer": "#### 1,234,567", "idx": 2},
]
ROWS = {"math500": MATH500_ROWS, "aime24": AIME24_ROWS, "amc23": AMC23_ROWS, "gsm8k": GSM8K_ROWS}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data_dir(tmp_path):
    for name, rows in ROWS.items():
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    return tmp_path


@pytest.mark.parametrize(
    "name, problems0, answers, ids",
    [
        (
            "math500",
            "Convert $(0,3)$ to polar coordinates.",
            [r"\left( 3, \frac{\pi}{2} \right)", r"\text{Evelyn}", "2"],
            ["test/precalculus/807.json", "test/algebra/924.json", "test/prealgebra/1.json"],
        ),
        ("aime24", "Every morning Aya goes for a walk...", ["204", "113"], ["60", "61"]),
        ("amc23", "Cities $A$ and $B$ are $45$ miles apart...", ["27", "36", "1.5"], ["0", "1", "2"]),
        ("gsm8k", "Janet's ducks lay 16 eggs per day...", ["18", "70000", "1234567"], ["0", "1", "2"]),
    ],
)
def test_local_formats(data_dir, name, problems0, answers, ids):
    ds = load_math_dataset(name, path=str(data_dir))
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == COLUMNS
    assert all(ds.features[c] == datasets.Value("string") for c in COLUMNS)
    assert ds["problem"][0] == problems0
    assert ds["answer"] == answers
    assert ds["id"] == ids
    assert ds["source"] == [name] * len(answers)


def test_file_path_limit_and_case(data_dir):
    ds = load_math_dataset("GSM8K", path=str(data_dir / "gsm8k.jsonl"), limit=2)
    assert len(ds) == 2 and ds["answer"] == ["18", "70000"] and ds["source"] == ["gsm8k", "gsm8k"]
    assert len(load_math_dataset("amc23", path=str(data_dir), limit=0)) == 0
    assert len(load_math_dataset("amc23", path=str(data_dir), limit=100)) == 3
    assert load_math_dataset("amc23", path=str(data_dir), split="train[:1]")["answer"] == ["27"]


def test_math_answer_from_solution_when_no_answer_field(tmp_path):
    rows = [
        {"problem": "p1", "solution": r"first \boxed{1}, finally $\boxed{\frac{1}{2}}$."},
        {"problem": "p2", "solution": r"\boxed{\{1,2\}}"},
    ]
    ds = load_math_dataset("math500", path=str(write_jsonl(tmp_path / "m.jsonl", rows)))
    assert ds["answer"] == [r"\frac{1}{2}", r"\{1,2\}"]
    assert ds["id"] == ["0", "1"]  # no id column: row index


def test_question_and_capitalised_columns(tmp_path):
    rows = [{"id": "2025-I-1", "question": "Find the sum...", "answer": 70}]
    ds = load_math_dataset("aime25", path=str(write_jsonl(tmp_path / "aime25.jsonl", rows)))
    assert ds[0] == {"problem": "Find the sum...", "answer": "70", "source": "aime25", "id": "2025-I-1"}
    rows = [
        {"ID": "2024-II-4", "Problem": "Let $x$...", "Solution": r"so \boxed{33}", "Answer": 33}
    ]  # Maxwell-Jia style
    ds = load_math_dataset("aime24", path=str(write_jsonl(tmp_path / "aime24.jsonl", rows)))
    assert ds[0] == {"problem": "Let $x$...", "answer": "33", "source": "aime24", "id": "2024-II-4"}


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="known") as err:
        load_math_dataset("mmlu", path="/nonexistent")
    for name in KNOWN_DATASETS:
        assert name in str(err.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="aime24.jsonl"):
        load_math_dataset("aime24", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_math_dataset("aime24", path=str(tmp_path / "nope.jsonl"))


def test_missing_column_names_file_and_column(tmp_path):
    f = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "q", "idx": 0}])
    with pytest.raises(KeyError, match="'answer'") as err:
        load_math_dataset("gsm8k", path=str(f))
    assert str(f) in str(err.value)
    f = write_jsonl(tmp_path / "amc23.jsonl", [{"id": 0, "answer": 3.0}])
    with pytest.raises(KeyError, match="problem") as err:
        load_math_dataset("amc23", path=str(f))
    assert str(f) in str(err.value)


def test_row_without_answer_is_an_error(tmp_path):
    f = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "q", "answer": "no final line"}])
    with pytest.raises(ValueError, match="row 0"):
        load_math_dataset("gsm8k", path=str(f))
    f = write_jsonl(tmp_path / "math500.jsonl", [{"problem": "q", "solution": "no box here"}])
    with pytest.raises(ValueError, match="solution"):
        load_math_dataset("math500", path=str(f))


@pytest.mark.parametrize(
    "name, repo, config, split, rows",
    [
        ("math500", "HuggingFaceH4/MATH-500", None, "test", MATH500_ROWS),
        ("aime24", "HuggingFaceH4/aime_2024", None, "train", AIME24_ROWS),
        ("aime25", "yentinglin/aime_2025", None, "train", AIME24_ROWS),
        ("amc23", "math-ai/amc23", None, "test", AMC23_ROWS),
        ("gsm8k", "openai/gsm8k", "main", "test", [{k: r[k] for k in ("question", "answer")} for r in GSM8K_ROWS]),
    ],
)
def test_hub_sources(monkeypatch, name, repo, config, split, rows):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_math_dataset(name, limit=2)
    assert calls == [(repo, config, split)]
    assert len(ds) == 2 and ds.column_names == COLUMNS and ds["source"] == [name, name]
    if name == "gsm8k":
        assert ds["answer"] == ["18", "70000"] and ds["id"] == ["0", "1"]  # no idx on the hub
    load_math_dataset(name, split="validation")
    assert calls[-1] == (repo, config, "validation")


AIME_HISTORY_ROWS = [  # the columns of di-zhang-fdu/AIME_1983_2024
    {
        "ID": "1983-1",
        "Year": 1983,
        "Problem Number": 1,
        "Question": "Let $x$, $y$ and $z$ all exceed $1$...",
        "Answer": 60.0,
        "Part": None,
    },
    {
        "ID": "2023-II-15",
        "Year": 2023,
        "Problem Number": 15,
        "Question": "For each positive integer $n$...",
        "Answer": 363.0,
        "Part": "II",
    },
    {
        "ID": "2024-II-1",
        "Year": 2024,
        "Problem Number": 1,
        "Question": "Among the 900 residents of Aimeville...",
        "Answer": 73.0,
        "Part": "II",
    },
    {
        "ID": "1984-2",
        "Year": 1984,
        "Problem Number": 2,
        "Question": "The integer $n$ is the smallest...",
        "Answer": 592.0,
        "Part": None,
    },
]


def test_aime_history_keeps_contests_before_2024_on_the_hub_and_locally(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(AIME_HISTORY_ROWS))
    ds = load_math_dataset("aime_1983_2023")
    assert ds["id"] == ["1983-1", "2023-II-15", "1984-2"]  # AIME 2024 (an evaluation set) filtered out
    assert ds["answer"] == ["60", "363", "592"] and ds["source"] == ["aime_1983_2023"] * 3
    assert load_math_dataset("aime_1983_2023", limit=2)["id"] == ["1983-1", "2023-II-15"]  # limit after the filter
    monkeypatch.undo()
    rows = [
        {"id": r["ID"], "year": r["Year"], "problem": r["Question"], "answer": r["Answer"]} for r in AIME_HISTORY_ROWS
    ]
    ds = load_math_dataset("aime_1983_2023", path=str(write_jsonl(tmp_path / "aime.jsonl", rows)))
    assert ds["id"] == ["1983-1", "2023-II-15", "1984-2"]
    f = write_jsonl(tmp_path / "noyear.jsonl", [{"problem": "p", "answer": 1}])
    with pytest.raises(KeyError, match="year") as err:
        load_math_dataset("aime_1983_2023", path=str(f))
    assert str(f) in str(err.value)

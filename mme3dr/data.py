"""The MME-3DR prompt set: typed records, schema validation and the loader.

The packaged file ``data/mme3dr_249.jsonl`` holds this project's 249 prompts (the official item list is
unreleased; see ``data_cards/mme3dr.md``). ``load_benchmark(source=...)`` reads any file or ``datasets``
dataset with the same fields, so an official release can be loaded the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, overload

from mme3dr.categories import CATEGORIES, CHECK_TYPES, resolve_category
from mme3dr.errors import InputError, UnknownNameError
from mme3dr.paths import UnsafePathError, check_id

PACKAGED_SOURCE = "mme3dr:data/mme3dr_249.jsonl"
REQUIRED_FIELDS = ("id", "category", "prompt", "object_class", "source")
CHECKLIST_RANGE = (3, 8)


class BenchmarkFormatError(InputError):
    """A prompt file or dataset does not follow the MME-3DR schema; the message names the bad row."""


@dataclass(frozen=True)
class ChecklistItem:
    """One yes/no question a VLM judge answers from renders; ``answer`` is what a faithful asset gives."""

    type: str
    question: str
    answer: str  # "yes" or "no"


@dataclass(frozen=True)
class PromptRecord:
    """One benchmark item."""

    id: str
    category: str
    prompt: str
    object_class: str
    source: str
    checklist: tuple[ChecklistItem, ...] = field(default_factory=tuple)

    @property
    def category_name(self) -> str:
        return CATEGORIES[self.category].name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checklist"] = [asdict(c) for c in self.checklist]
        return d

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> PromptRecord:
        """Build a record, raising ``ValueError`` with the field at fault (the caller adds the row)."""
        missing = [k for k in (*REQUIRED_FIELDS, "checklist") if k not in row]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        for key in REQUIRED_FIELDS:
            if not isinstance(row[key], str) or not row[key].strip():
                raise ValueError(f"field {key!r} must be a non-empty string, got {row[key]!r}")
        try:
            check_id(row["id"].strip(), "field 'id'")
        except UnsafePathError as exc:
            raise ValueError(str(exc)) from None
        try:
            category = resolve_category(row["category"])
        except ValueError as exc:
            raise ValueError(f"field 'category': {exc}") from None
        raw_items = row["checklist"]
        if isinstance(raw_items, str):  # CSV-like sources store the list as JSON text
            try:
                raw_items = json.loads(raw_items)
            except json.JSONDecodeError as exc:
                raise ValueError(f"field 'checklist' is not valid JSON: {exc}") from None
        if not isinstance(raw_items, (list, tuple)):
            raise ValueError(f"field 'checklist' must be a list, got {type(raw_items).__name__}")
        lo, hi = CHECKLIST_RANGE
        if raw_items and not lo <= len(raw_items) <= hi:
            raise ValueError(f"field 'checklist' has {len(raw_items)} items; expected {lo}-{hi} (or none)")
        items = []
        for j, it in enumerate(raw_items, 1):
            if not isinstance(it, Mapping) or set(it) < {"type", "question", "answer"}:
                raise ValueError(f"checklist item {j} must have 'type', 'question' and 'answer', got {it!r}")
            if it["type"] not in CHECK_TYPES:
                raise ValueError(f"checklist item {j}: type {it['type']!r} is not one of {', '.join(CHECK_TYPES)}")
            if not isinstance(it["question"], str) or not it["question"].strip():
                raise ValueError(f"checklist item {j}: question must be a non-empty string")
            answer = str(it["answer"]).strip().lower()
            if answer not in ("yes", "no"):
                raise ValueError(f"checklist item {j}: answer must be 'yes' or 'no', got {it['answer']!r}")
            items.append(ChecklistItem(it["type"], it["question"].strip(), answer))
        return cls(id=row["id"].strip(), category=category, prompt=row["prompt"].strip(),
                   object_class=row["object_class"].strip(), source=row["source"].strip(),
                   checklist=tuple(items))


class Benchmark(Sequence[PromptRecord]):
    """An ordered, validated list of prompt records with the set's provenance."""

    def __init__(self, records: Iterable[PromptRecord], source: str, location: str | None = None) -> None:
        self.records = list(records)
        self.source = source
        #: What ``load_benchmark(source=...)`` takes to load this set again from anywhere: None for the packaged
        #: set, an absolute path for a file or dataset folder, ``owner/name:split`` for a hub dataset. Runs record
        #: it (``run.json`` ``prompts.location``) so that scoring reads the checklists of the run's own prompts.
        self.location = location
        self._by_id = {r.id: r for r in self.records}

    @overload
    def __getitem__(self, i: int) -> PromptRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[PromptRecord]: ...
    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        return self.records[i]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"Benchmark({len(self)} prompts from {self.source}: {dict(self.counts())})"

    def by_id(self, prompt_id: str) -> PromptRecord:
        try:
            return self._by_id[prompt_id]
        except KeyError:
            from mme3dr.registry import did_you_mean

            raise UnknownNameError(f"no prompt {prompt_id!r} in {self.source}."
                                   f"{did_you_mean(prompt_id, self._by_id)}") from None

    def info(self) -> dict[str, Any]:
        """What a run records about its prompts (``run.json`` ``prompts``): source, location, n, counts."""
        return {"source": self.source, "location": self.location, "n": len(self), "counts": dict(self.counts())}

    def counts(self) -> Counter[str]:
        """Number of prompts per category key, in the paper's category order."""
        c = Counter(r.category for r in self.records)
        return Counter({k: c[k] for k in CATEGORIES if c[k]})

    def to_dataset(self):  # -> datasets.Dataset
        """The records as a Hugging Face ``datasets.Dataset`` (checklist as a list of structs)."""
        import datasets

        features = datasets.Features({
            "id": datasets.Value("string"), "category": datasets.Value("string"),
            "prompt": datasets.Value("string"), "object_class": datasets.Value("string"),
            "source": datasets.Value("string"),
            "checklist": datasets.List({"type": datasets.Value("string"), "question": datasets.Value("string"),
                                        "answer": datasets.Value("string")}),
        })
        return datasets.Dataset.from_list([r.to_dict() for r in self.records], features=features)


def _read_rows(source: str | Path | None) -> tuple[list[Mapping[str, Any]], str, str | None]:
    """Return raw rows, a human-readable description of where they came from, and the source to load them again
    (:attr:`Benchmark.location`)."""
    if source is None:
        text = files("mme3dr").joinpath("data/mme3dr_249.jsonl").read_text(encoding="utf-8")
        return _parse_jsonl(text, PACKAGED_SOURCE), PACKAGED_SOURCE, None
    path = Path(source).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return _parse_jsonl(text, str(path)), str(path), str(path.resolve())
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BenchmarkFormatError(f"{path}: not valid JSON ({exc})") from None
            rows = data.get("prompts") if isinstance(data, dict) else data
            if not isinstance(rows, list):
                raise BenchmarkFormatError(f"{path}: expected a list of records or {{'prompts': [...]}}")
            return rows, str(path), str(path.resolve())
        raise BenchmarkFormatError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .json")
    return _read_hf(str(source))


def _parse_jsonl(text: str, where: str) -> list[Mapping[str, Any]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise BenchmarkFormatError(f"{where}, line {lineno}: not valid JSON ({exc.msg})") from None
    return rows


def _read_hf(source: str) -> tuple[list[Mapping[str, Any]], str, str]:
    """A local dataset folder or a hub id, optionally ``name:split`` (default split ``train``)."""
    import datasets

    local = Path(source).exists()
    name, _, split = source.partition(":") if not local else (source, "", "")
    split = split or "train"
    try:
        if (Path(name) / "dataset_info.json").exists() or (Path(name) / "state.json").exists():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types (connection, not found, offline)
        raise BenchmarkFormatError(
            f"cannot load prompts from {source!r}: it is not a file, and datasets could not load it as a "
            f"dataset folder or hub id ({type(exc).__name__}: {exc}). Pass a .jsonl/.json file, a dataset "
            "folder, or a hub id (with network access, or cached and HF_HUB_OFFLINE=1)."
        ) from exc
    return list(ds), f"{name} (split {split})", str(Path(name).resolve()) if local else f"{name}:{split}"


def validate_rows(rows: Sequence[Mapping[str, Any]], where: str) -> list[PromptRecord]:
    """Validate every row and the set (unique ids, also ignoring case: ids name folders, and some file systems
    do not tell ``A`` from ``a``); errors name the row number and id."""
    records: list[PromptRecord] = []
    seen: dict[str, tuple[int, str]] = {}
    for i, row in enumerate(rows, 1):
        rid = row.get("id", "?") if isinstance(row, Mapping) else "?"
        if not isinstance(row, Mapping):
            raise BenchmarkFormatError(f"{where}: row {i} is not an object: {row!r}")
        try:
            rec = PromptRecord.from_dict(row)
        except ValueError as exc:
            raise BenchmarkFormatError(f"{where}: row {i} (id {rid!r}): {exc}") from None
        key = rec.id.casefold()
        if key in seen:
            row_no, other = seen[key]
            what = "repeats" if other == rec.id else f"differs only in case from {other!r} in"
            raise BenchmarkFormatError(f"{where}: row {i}: id {rec.id!r} {what} row {row_no}")
        seen[key] = (i, rec.id)
        records.append(rec)
    if not records:
        raise BenchmarkFormatError(f"{where}: no prompt records")
    return records


def stratified_head(records: Sequence[PromptRecord], limit: int) -> list[PromptRecord]:
    """The first ``limit`` records taken round-robin over categories (first ids of each), in file order."""
    by_cat: dict[str, list[PromptRecord]] = {}
    for r in records:
        by_cat.setdefault(r.category, []).append(r)
    chosen: set[str] = set()
    depth = 0
    while len(chosen) < min(limit, len(records)):
        for recs in by_cat.values():
            if depth < len(recs) and len(chosen) < limit:
                chosen.add(recs[depth].id)
        depth += 1
    return [r for r in records if r.id in chosen]


def load_benchmark(categories: Iterable[str] | str | None = None, limit: int | None = None,
                   source: str | Path | None = None) -> Benchmark:
    """Load and validate the prompt set.

    Args:
        categories: category keys or names to keep (default: all five).
        limit: keep this many prompts in total, spread evenly over the kept categories (first ids of each).
        source: ``None`` for the packaged 249 prompts, a ``.jsonl``/``.json`` file, a ``datasets`` folder, or a
            hub dataset id (``owner/name`` or ``owner/name:split``) with the same fields.
    """
    rows, where, location = _read_rows(source)
    records = validate_rows(rows, where)
    if categories is not None:
        wanted = {resolve_category(c) for c in ([categories] if isinstance(categories, str) else categories)}
        records = [r for r in records if r.category in wanted]
    if limit is not None:
        if limit < 1:
            raise InputError(f"limit must be >= 1, got {limit}")
        records = stratified_head(records, limit)
    return Benchmark(records, where, location)

"""The HTML report shows values from run folders that may be someone else's: every one is escaped (issue 13,
point 3). A payload in each field must not add an element, an attribute or a script to the page: checked with
``html.parser`` always, and by running the page in headless Chromium where one is installed."""

import json
import os
import shutil
import subprocess
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from mme3dr.generation import GenerationRecord
from mme3dr.render.presets import get_preset
from mme3dr.report import build_report
from mme3dr.report.html import SORT_JS
from mme3dr.score_records import SetMetricRecord, SetScore

TAG = get_preset("canonical").tag


def payload(field: str) -> str:
    """Markup that, if it reached the page unescaped, would add an element, an event attribute or a script that
    marks ``<body>`` with ``data-pwned="<field>"`` (the attribute name is built at run time, so the marker never
    appears in the page as text)."""
    js = f"document.body.setAttribute('data-pw'+'ned','{field}')"
    return (f"{field}</b></div></td></th></li><script>{js}</script><img src=x onerror=\"{js}\">"
            f"<svg onload=\"{js}\"></svg>' onmouseover='{js}' x=\"\" onfocus=\"{js}\" autofocus ")


def _write_run(run: Path, tag: str) -> list[str]:
    """A run folder written by someone else: a payload in every field the report can show."""
    run.mkdir(parents=True)
    model = {"name": payload(f"model-{tag}"), "args": {payload("arg-key"): payload("arg-value")}}
    (run / "run.json").write_text(json.dumps({
        "toolkit_version": payload("toolkit"), "git_commit": payload("commit"), "model": model,
        "preset": {"tag": TAG, "name": payload("preset-name")}}))
    pids = ["spatial-001", payload("prompt-id"), "biological-001"]
    cats = ["spatial", payload("category"), "biological"]
    with open(run / "generations.jsonl", "w") as f:
        for pid, cat in zip(pids, cats):
            rec = GenerationRecord(pid, cat, payload("prompt-text"), 0, model, None if pid == pids[2] else "x.glb",
                                   payload("generation-error") if pid == pids[2] else None, "+z", 0.1,
                                   {payload("meta-key"): payload("meta-value")})
            f.write(json.dumps(asdict(rec)) + "\n")
    sheet = run / "renders" / TAG / pids[0]
    sheet.mkdir(parents=True)
    Image.new("RGB", (64, 32), (200, 30, 30)).save(sheet / "contact_sheet.png")
    key = payload("metric-key")
    with open(run / "scores.jsonl", "w") as f:
        for pid, cat in zip(pids, cats):
            f.write(json.dumps({
                "prompt_id": pid, "category": cat, "metric": payload("metric-name"), "config_hash": "h",
                "values": {"vlm_checklist": 0.5, key: 1.0}, "directions": {"vlm_checklist": "higher", key: "higher"},
                "error": payload("metric-error"),
                "details": {"checklist": [{"type": "part", "question": payload("question"),
                                           "expected": payload("expected"), "answer": payload("answer"),
                                           "correct": payload("correct")}],
                            "queries": {"checklist": {"response": payload("raw-vlm-answer"), "parsed": None,
                                                      "reason": payload("parse-reason")}}}}) + "\n")
    score = SetScore(payload("reference-subset"), 2, 8 + len(tag), 4, 16, value=0.01, se=0.001, ci_low=0.0,
                     ci_high=0.02, paper_value=0.02, paper_std=0.001, paper_subset_size=4)
    record = SetMetricRecord("kid", payload("extractor"), "h", payload("reference"), score, {"spatial": score})
    (run / "set_scores.json").write_text(json.dumps({"kid": record.to_json(),
                                                     payload("set-metric"): {"format": payload("format")}}))
    return pids


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if tag == "script":
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


#: Every element and attribute the report itself writes.
ALLOWED = {"html": {"lang"}, "head": set(), "meta": {"charset"}, "title": set(), "style": set(), "body": set(),
           "h1": set(), "h2": set(), "h3": set(), "table": {"class"}, "caption": set(), "thead": set(),
           "tbody": set(), "tr": set(), "th": set(), "td": {"data-v"}, "p": {"class"}, "div": {"class"},
           "ul": set(), "li": set(), "b": set(), "span": {"class"}, "img": {"alt", "src"}, "script": set()}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("escaping")
    _write_run(tmp / "A", "a")
    _write_run(tmp / "B", "bb")  # other view counts: a comparability warning
    files = build_report([tmp / "A", tmp / "B"], tmp / "out", title=payload("title"))
    return tmp, files


def _check_page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    for tag, attrs in page.tags:
        assert tag in ALLOWED, f"injected element <{tag}>"
        assert set(attrs) <= ALLOWED[tag], f"injected attribute(s) {set(attrs) - ALLOWED[tag]} on <{tag}>"
    assert page.scripts == [SORT_JS]  # the page's only script is its own
    return page


def test_checklist_answers_are_escaped(tmp_path):
    """The checklist's ``expected`` value went into the page as it was (plots off: the text alone)."""
    _write_run(tmp_path / "A", "a")
    files = build_report([tmp_path / "A"], tmp_path / "out", plots=False)
    text = files.html.read_text()
    _check_page(text)
    assert "expected expected&lt;/b&gt;" in text


def test_report_embeds_no_image_from_outside_the_run(tmp_path):
    """run.json's preset tag and the render folders are the run's own word: a tag or a link leading out of the
    run must not put someone's files into the report."""
    outside = tmp_path / "outside"
    (outside / "spatial-001").mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 0, 255)).save(outside / "spatial-001" / "contact_sheet.png")
    for name, tag in (("A", "../../outside"), ("B", None)):
        _write_run(tmp_path / name, name.lower())
        info = json.loads((tmp_path / name / "run.json").read_text())
        info["preset"]["tag"] = tag
        (tmp_path / name / "run.json").write_text(json.dumps(info))
        shutil.rmtree(tmp_path / name / "renders" / TAG)
    (tmp_path / "B" / "renders" / "link").symlink_to(outside)
    for name in ("A", "B"):
        files = build_report([tmp_path / name], tmp_path / f"out{name}", plots=False)
        assert "data:image/jpeg" not in files.html.read_text()


def test_report_escapes_every_field(report):
    tmp, files = report
    text = files.html.read_text()
    page = _check_page(text)
    for tag, attrs in page.tags:
        assert (attrs.get("src") or "data:image/").startswith("data:image/"), attrs
    shown = [f for f in ("model-a", "prompt-id", "category", "prompt-text", "metric-key", "metric-name",
                         "metric-error", "question", "expected", "answer", "reference-subset", "title", "toolkit",
                         "commit") if f"{f}&lt;/b&gt;" not in text]
    assert not shown, f"not on the page (escaped): {shown}"
    assert sum(tag == "img" and a.get("src", "").startswith("data:image/jpeg") for tag, a in page.tags) == 2
    assert "Warnings" in text and "no fixed worst value" in text  # the warnings (with a payload key) are shown


def test_report_files_stay_in_the_report_folder(report):
    tmp, files = report
    written = {p for p in tmp.rglob("*") if p.is_file() and not p.is_relative_to(tmp / "A")
               and not p.is_relative_to(tmp / "B")}
    assert all(p.is_relative_to(files.folder) for p in written), sorted(written)
    stems = {p.stem for p in files.plots}
    assert any(s.startswith("bars_metric-key_") for s in stems)  # the hostile key, as a safe file name
    assert all(s.replace("-", "").replace("_", "").replace(".", "").isalnum() for s in stems), stems


def _chromium() -> str | None:
    names = [os.environ.get("MME3DR_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome",
             "google-chrome-stable", "chrome", "headless_shell", "chrome-headless-shell"]
    return next((p for p in (shutil.which(n) for n in names if n) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (set MME3DR_CHROMIUM to its binary)")
def test_report_in_headless_chromium(report, tmp_path):
    """Load the page in headless Chromium, let it run (scripts, image errors, autofocus), then read the DOM: no
    payload ran (``<body>`` has no ``data-pwned``), the sortable tables were set up, no error reached the console."""
    _, files = report
    res = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                          "--virtual-time-budget=5000", "--dump-dom", files.html.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = _Page()
    dom.feed(res.stdout)
    body = next(attrs for tag, attrs in dom.tags if tag == "body")
    assert "data-pwned" not in body, f"payload in field {body.get('data-pwned')!r} ran"
    assert "data-pwned" not in res.stdout.replace("data-pw'+'ned", "")
    assert not [line for line in res.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]

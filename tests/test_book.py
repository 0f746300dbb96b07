"""`make book`: the series builds into a static HTML site from the committed outputs (nothing re-executed), in
under 2 minutes and without a Sphinx warning, and every page, internal link, anchor and image in it resolves.

Marked `book` (about 15-30 s): `pytest -m "not book"` skips it. Without Sphinx/myst-nb installed it is skipped,
except under CI (CI=true), where `make setup` has installed them from requirements.txt and a skip would hide a
broken install.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERIES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
BUDGET_S = 120

pytestmark = pytest.mark.book
missing = [m for m in ("sphinx", "myst_nb", "sphinx_book_theme") if importlib.util.find_spec(m) is None]
if missing and not os.environ.get("CI"):
    pytest.skip(f"the book's tools are not installed ({', '.join(missing)}): `make setup`", allow_module_level=True)


class Page(HTMLParser):
    """Ids, and the targets of links, images, scripts and stylesheets, of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images, self.assets = set(), [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key) and (key == "id" or tag == "a"):
                self.ids.add(attrs[key])
        if tag == "a" and attrs.get("href") is not None:
            self.links.append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "script" and attrs.get("src"):
            self.assets.append(attrs["src"])
        elif tag == "link" and attrs.get("href") and attrs.get("rel") in ("stylesheet", "next", "prev", "index",
                                                                             "search", "canonical"):
            self.assets.append(attrs["href"])


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book") / "html"
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-c", "book", "-W", "--keep-going", "-q",
                          ".", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert run.returncode == 0, f"sphinx-build failed or warned:\n{run.stderr[-5000:]}"
    return out, seconds


def pages(out: Path) -> dict[Path, Page]:
    return {p: parse(p) for p in out.rglob("*.html") if "_static" not in p.parts}


def is_external(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https", "mailto", "data", "javascript") or url.startswith("//")


def test_builds_within_budget_without_warnings(book):
    _, seconds = book
    assert seconds < BUDGET_S, f"make book took {seconds:.0f} s, over the {BUDGET_S} s budget"


def test_every_notebook_readme_and_search_has_a_page(book):
    out, _ = book
    expected = ["index.html", "README.html", "search.html", "searchindex.js", "data/README.html",
                "benchmarks/RESULTS.html"]
    expected += [f"notebooks/{p.stem}.html" for p in SERIES] + [f"solutions/{p.stem}.html" for p in SOLUTIONS]
    assert [name for name in expected if not (out / name).is_file()] == []
    assert 'url=README.html' in (out / "index.html").read_text()
    landing = parse(out / "README.html")
    assert {f"notebooks/{p.stem}.html" for p in SERIES} <= set(landing.links), "README's notebook table links"
    assert "benchmarks/RESULTS.html" in landing.links


def test_every_internal_link_anchor_image_and_asset_resolves(book):
    out, _ = book
    parsed = pages(out)
    broken = []
    for path, page in parsed.items():
        for url in page.links + page.images + page.assets:
            if not url or is_external(url):
                continue
            parts = urlsplit(url)
            target = path if not parts.path else (path.parent / unquote(parts.path)).resolve()
            if not target.exists():
                broken.append(f"{path.relative_to(out)}: {url} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(out)}: {url} (no id {parts.fragment!r})")
    assert broken == [], "\n".join(broken[:30])


@pytest.mark.parametrize("notebook", SERIES + SOLUTIONS, ids=lambda p: p.name)
def test_each_notebook_page_shows_its_figures_and_maths(book, notebook):
    out, _ = book
    html_path = out / notebook.parent.name / f"{notebook.stem}.html"
    page = parse(html_path)
    cells = json.loads(notebook.read_text())["cells"]
    figures = sum("image/png" in o.get("data", {}) for c in cells if c["cell_type"] == "code" for o in c["outputs"])
    local_images = [src for src in page.images if not is_external(src)]
    assert len(local_images) >= figures, f"{figures} figures in the notebook, {len(local_images)} images on its page"
    sources = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    if "$" in sources:
        text = html_path.read_text()
        assert 'class="math' in text and "mathjax" in text.lower(), "maths is not rendered as MathJax"


def test_cross_notebook_links_and_the_notation_anchor(book):
    out, _ = book
    first = parse(out / "notebooks" / "01_peft_motivation.html")
    assert "notation" in first.ids
    linking = [p for p in SERIES if "01_peft_motivation.ipynb#notation" in p.read_text()]
    assert linking, "no notebook links to the notation table"
    for nb in linking:
        assert "01_peft_motivation.html#notation" in parse(out / "notebooks" / f"{nb.stem}.html").links, nb.name


@pytest.mark.parametrize("notebook", SERIES, ids=lambda p: p.name)
def test_each_series_page_links_its_solutions_page(book, notebook):
    # the Exercises cell's relative link ../solutions/<stem>_solutions.ipynb becomes a link to the solutions page
    out, _ = book
    solution = ROOT / "solutions" / f"{notebook.stem}_solutions.ipynb"
    if not solution.is_file():
        pytest.skip(f"no solutions/{solution.name} yet")
    links = parse(out / "notebooks" / f"{notebook.stem}.html").links
    assert f"../solutions/{notebook.stem}_solutions.html" in links, f"{notebook.name}: no link to its solutions page"

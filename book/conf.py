"""Sphinx configuration of the series' book: `make book` builds it, from the committed outputs, into _build/book.

The source directory is the repository root (so the notebooks stay where they are and every relative link in them
and in the README resolves as it does on GitHub); this directory holds only the configuration:
`sphinx-build -c book . _build/book`. The landing page is README.md; its navigation (a hidden table of contents
listing notebooks/ and, once it exists, solutions/) is appended when Sphinx reads it, so the README itself
carries no Sphinx syntax. Notebooks are rendered, never executed.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

project = "Parameter-efficient fine-tuning, built from scratch"
author = "the project's authors"
copyright = "the project's authors"

extensions = ["myst_nb"]
root_doc = "README"

# What the book is made of. Everything else at the top level (.venv, .git, helpers/, tests/, _build, ...) is pruned
# before Sphinx walks into it; data/README.md and benchmarks/RESULTS.md are pages because the README refers the
# reader to them.
PAGES = ["README.md", "notebooks/[0-9][0-9]_*.ipynb", "solutions/*.ipynb", "data/README.md", "benchmarks/RESULTS.md"]
include_patterns = PAGES
BOOK_TOP_LEVEL = {"README.md", "notebooks", "solutions", "data", "benchmarks"}
exclude_patterns = sorted(p.name for p in ROOT.iterdir() if p.name not in BOOK_TOP_LEVEL)
exclude_patterns += ["**/.ipynb_checkpoints"]

# Render the committed outputs as they are: no kernel, no cache.
nb_execution_mode = "off"
nb_merge_streams = True
# Widgets: the committed text/plain fallback ("interactive: run the notebook to use it"), never a JavaScript view.
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = "PEFT, built from scratch"
# Where the repository is hosted, e.g. "https://github.com/<owner>/<repo>" (the project does not know yet). Set it
# and every notebook page gets a "launch on Binder" button (opening that notebook in JupyterLab on mybinder.org)
# and a link to the repository.
REPOSITORY_URL = ""
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": True,
}
if REPOSITORY_URL:
    html_theme_options |= {
        "repository_url": REPOSITORY_URL, "repository_branch": "main", "use_repository_button": True,
        "launch_buttons": {"binderhub_url": "https://mybinder.org", "notebook_interface": "jupyterlab"},
    }
html_copy_source = True
html_show_sourcelink = False
# GitHub Pages serves index.html: send it to the landing page.
html_extra_path = ["extra"]
# Offline: MathJax is loaded by the reader's browser from its CDN (Sphinx's default); nothing is fetched at build time.

NAV = """

```{toctree}
:hidden:
:caption: The series
:glob:

notebooks/[0-9][0-9]_*
```

```{toctree}
:hidden:
:caption: Reference

data/README
benchmarks/RESULTS
```
"""
NAV_SOLUTIONS = """
```{toctree}
:hidden:
:caption: Solutions
:glob:

solutions/*
```
"""
ANCHOR = re.compile(r'<a (?:id|name)="([A-Za-z][\w-]*)"\s*/?>')


def add_navigation(app, docname, source):
    """The README stays plain Markdown; the book's table of contents is appended to it here."""
    if docname == root_doc:
        source[0] += NAV + (NAV_SOLUTIONS if any((ROOT / "solutions").glob("*.ipynb")) else "")


def register_html_anchors(app, doctree):
    """`<a id="notation"></a>` in a Markdown cell is a link target (`01_peft_motivation.ipynb#notation`):
    register each such raw-HTML anchor as a label of its page, so links to it resolve (and are checked)."""
    std = app.env.domains.standard_domain
    for node in doctree.findall(lambda n: n.tagname == "raw" and "html" in n.get("format", "")):
        for name in ANCHOR.findall(node.astext()):
            std.anonlabels[name] = (app.env.docname, name)


def setup(app):
    app.connect("source-read", add_navigation)
    app.connect("doctree-read", register_html_anchors)

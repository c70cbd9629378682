"""The book builds, its code runs, and every page typesets its math offline.

* One real build per session (module fixture): ``jupyter-book build . --all -W --keep-going``
  as a subprocess, into a temporary output folder, so the chapters are executed against the
  bnlab in this checkout and any warning or failing cell fails the test.
* Each chapter page is opened in headless Chromium (Debian's /usr/bin/chromium) through a
  localhost HTTP server: the dumped DOM must contain one typeset ``mjx-container`` per math
  block of the built HTML, no MathJax error and no raw TeX; Chromium's network log must show
  no request from the page to anything but the local server.
* The built HTML must not reference a remote script, stylesheet, font or image, and must load
  exactly one MathJax script.
* A throwaway book with the same configuration and one failing cell must fail to build.

Chromium missing is a failure, not a skip: run ``.ci/install-system-deps.sh``.
"""

import functools
import html.parser
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
CHROMIUM = Path("/usr/bin/chromium")
BUILD_FLAGS = ["--all", "-W", "--keep-going"]
BUILD_TIMEOUT_S = 900
CHAPTERS = ["book/intro", "book/forward", "book/backward", "book/training-inference",
            "book/family", "book/layer-group-instance", "book/batch-renorm",
            "book/rmsnorm-ghost", "book/experiments", "book/exp-ioffe-figure1",
            "book/exp-learning-rate-init", "book/exp-batch-size", "book/exp-placement-dropout",
            "book/exp-landscape", "book/exp-overhead", "book/exp-inference-stats",
            "book/speed", "book/across-devices", "book/inference-deploy", "book/instructors"]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic",
]


def build_book(source, output, timeout=BUILD_TIMEOUT_S):
    """Run the real build command on ``source`` writing into ``output``; return the result."""
    command = [str(JUPYTER_BOOK), "build", str(source), "--path-output", str(output),
               *BUILD_FLAGS]
    return subprocess.run(command, cwd=source, capture_output=True, text=True,
                          timeout=timeout)


def tail(text, lines=60):
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def built_html(tmp_path_factory):
    """Build the book once for this module; return the folder holding index.html."""
    assert JUPYTER_BOOK.exists(), f"{JUPYTER_BOOK} not found: run `make book` once to create .venv"
    output = tmp_path_factory.mktemp("book")
    result = build_book(ROOT, output)
    assert result.returncode == 0, (
        f"jupyter-book build failed (exit {result.returncode}):\n"
        f"{tail(result.stdout)}\n{tail(result.stderr)}")
    html_dir = output / "_build" / "html"
    assert (html_dir / "index.html").is_file()
    return html_dir


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    # jb-book: either top-level `chapters`, or `parts`, each with a caption and `chapters`.
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        for entry in part["chapters"]:
            files.append(entry["file"])
    return files


def test_toc_lists_the_chapters():
    files = toc_files()
    assert files[0] == "book/intro"
    for chapter in CHAPTERS:
        assert chapter in files
        assert (ROOT / f"{chapter}.md").is_file()


def test_chapters_are_stored_as_myst_notebooks_without_outputs():
    for chapter in CHAPTERS[1:]:
        text = (ROOT / f"{chapter}.md").read_text()
        assert text.startswith("---\njupytext:"), f"{chapter}.md lacks jupytext front matter"
        assert "kernelspec:" in text.split("---")[1]
        assert "```{code-cell} ipython3" in text
        assert re.search(r"^\s*(assert |\S*assert_(allclose|close)\()", text, re.M), (
            f"{chapter}.md checks nothing")


def test_toc_groups_the_family_into_its_own_part():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert "chapters" not in toc, "with `parts`, every chapter must sit under a part"
    parts = {part["caption"]: [entry["file"] for entry in part["chapters"]]
             for part in toc["parts"]}
    assert parts["The normalization family"] == [
        "book/family", "book/layer-group-instance", "book/batch-renorm", "book/rmsnorm-ghost"]


def test_toc_puts_engineering_between_the_experiments_and_the_instructors():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    captions = [part["caption"] for part in toc["parts"]]
    engineering = captions.index("Engineering BatchNorm")
    assert captions[engineering - 1].startswith("Experiments")
    assert captions[engineering + 1] == "For instructors"
    assert "book/speed" in [entry["file"] for entry in toc["parts"][engineering]["chapters"]]


def test_toc_gives_instructors_their_own_part_before_the_back_matter():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    captions = [part["caption"] for part in toc["parts"]]
    assert captions[-2:] == ["For instructors", "Back matter"]
    assert [entry["file"] for entry in toc["parts"][-2]["chapters"]] == ["book/instructors"]


def test_config_executes_every_build_and_fails_on_errors():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "force"
    assert config["execute"]["raise_on_error"] is True
    assert config["execute"]["timeout"] > 0
    assert config["only_build_toc_files"] is True
    extensions = config["parse"]["myst_enable_extensions"]
    for needed in ("amsmath", "dollarmath", "colon_fence"):
        assert needed in extensions


class _PageScan(html.parser.HTMLParser):
    """Collects what a built page loads and how many math blocks it has."""

    def __init__(self):
        super().__init__()
        self.loads = []            # (tag, url) of scripts, stylesheets, fonts, images, media
        self.math_blocks = 0       # Sphinx's <span|div class="math ..."> elements
        self.mathjax_scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "math" in classes and tag in ("span", "div"):
            self.math_blocks += 1
        if tag in ("script", "img", "source", "video", "audio", "iframe", "embed") and attrs.get("src"):
            self.loads.append((tag, attrs["src"]))
            if "mathjax" in attrs["src"].lower():
                self.mathjax_scripts += 1
        if tag == "link" and attrs.get("href"):
            rel = (attrs.get("rel") or "").lower()
            if any(kind in rel for kind in ("stylesheet", "preload", "icon", "font", "modulepreload")):
                self.loads.append((tag, attrs["href"]))
        if tag == "object" and attrs.get("data"):
            self.loads.append((tag, attrs["data"]))


def scan(page):
    parser = _PageScan()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)


def test_pages_load_nothing_remote_and_mathjax_once(built_html):
    pages = sorted(built_html.rglob("*.html"))
    assert len(pages) >= len(CHAPTERS)
    for page in pages:
        parsed = scan(page)
        remote = [load for load in parsed.loads if REMOTE.match(load[1])]
        assert not remote, f"{page.relative_to(built_html)} loads remote resources: {remote}"
        text = page.read_text(encoding="utf-8")
        # url(...) in inline styles would load too.
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", text), page
    for chapter in CHAPTERS:
        parsed = scan(built_html / f"{chapter}.html")
        expected = 1 if parsed.math_blocks else 0  # Sphinx adds MathJax only where there is math
        assert parsed.mathjax_scripts == expected, (
            f"{chapter}: expected {expected} MathJax script tag(s), found {parsed.mathjax_scripts}")
    # MathJax and its CHTML fonts are served from the book itself.
    mathjax = built_html / "_static" / "mathjax"
    assert (mathjax / "tex-chtml.js").is_file()
    assert list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    # Stylesheets shipped with the book do not pull remote fonts either.
    for css in built_html.rglob("*.css"):
        assert not re.search(r"@import\s+url\(\s*['\"]?(https?:)?//|url\(\s*['\"]?https?://",
                             css.read_text(encoding="utf-8", errors="replace")), css


def test_chapters_execute_their_code(built_html):
    """The chapters' code cells ran: their printed results are in the pages."""
    for chapter, marker in [("book/forward", "max |bnlab - torch|"),
                            ("book/backward", "gradcheck passed"),
                            ("book/training-inference", "Expected more than 1 value per channel"),
                            ("book/family", "GBN(V=N) == BN"),
                            ("book/layer-group-instance", "== torch.nn.InstanceNorm2d"),
                            ("book/batch-renorm", "== autograd with r, d detached"),
                            ("book/rmsnorm-ghost", "applied to each virtual batch"),
                            ("book/speed", "fusing saves 40% of the forward traffic"),
                            ("book/instructors", "the grader exited with status 0")]:
        assert marker in (built_html / f"{chapter}.html").read_text(encoding="utf-8"), chapter


@pytest.fixture(scope="module")
def server(built_html):
    """Serve the built book on localhost for the browser."""
    handler = functools.partial(_QuietHandler, directory=str(built_html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def render(url, workdir):
    """Open url in headless Chromium; return (dumped DOM, URLs the page itself requested)."""
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the book test needs Debian's chromium to check that math "
        "renders offline. Install it with `.ci/install-system-deps.sh` (apt-get install chromium).")
    netlog = workdir / "netlog.json"
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}",
               f"--log-net-log={netlog}", "--virtual-time-budget=15000", "--dump-dom", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"chromium failed on {url}:\n{tail(result.stderr, 20)}"
    return result.stdout, page_requests(netlog)


def page_requests(netlog):
    """URLs of the requests a page initiated (the browser's own requests are 'not an origin')."""
    log = json.loads(netlog.read_text())
    kinds = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    urls = set()
    for event in log["events"]:
        params = event.get("params") or {}
        if kinds.get(event["type"]) == "URL_REQUEST_START_JOB" and "url" in params:
            initiator = params.get("initiator", "not an origin")
            if initiator != "not an origin":
                urls.add(params["url"])
    return urls


class _VisibleText(html.parser.HTMLParser):
    """Text a reader sees: outside <script>, <style>, <mjx-container> and code blocks."""

    HIDDEN = {"script", "style", "mjx-container", "pre", "code", "textarea", "noscript"}

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.parts = []
        self.merrors = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("mjx-merror", "merror") or any(name == "data-mjx-error" for name, _ in attrs):
            self.merrors += 1
        if tag in self.HIDDEN:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in self.HIDDEN and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)


def test_the_math_chapters_have_math(built_html):
    """The typesetting test below is not vacuous: the derivation chapters are full of math."""
    for chapter in ("book/forward", "book/backward", "book/training-inference", "book/family"):
        assert scan(built_html / f"{chapter}.html").math_blocks >= 10, chapter


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_math_is_typeset_offline(chapter, built_html, server, tmp_path):
    expected = scan(built_html / f"{chapter}.html").math_blocks
    dom, requested = render(f"{server}/{chapter}.html", tmp_path)

    containers = dom.count("<mjx-container")
    assert containers >= expected, (
        f"{chapter}: {containers} typeset formulas for {expected} math blocks; MathJax did not "
        "run (is _static/mathjax served?)")
    assert containers <= expected + 2, f"{chapter}: {containers} formulas for {expected} blocks"

    visible = _VisibleText()
    visible.feed(dom)
    assert visible.merrors == 0, f"{chapter}: MathJax reported {visible.merrors} errors"
    text = "".join(visible.parts)
    for raw in ("$$", "\\begin{", "\\frac", "\\hat{", "\\("):
        assert raw not in text, f"{chapter}: raw TeX {raw!r} left in the visible text"

    remote = sorted(url for url in requested if not url.startswith(server))
    assert not remote, f"{chapter}: the page requested remote resources: {remote}"
    if expected:
        assert any("mathjax/tex-chtml.js" in url for url in requested)


THROWAWAY_CHAPTER = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A throwaway chapter

```{code-cell} ipython3
CELL
```
"""


@pytest.mark.parametrize("cell, should_build", [
    ('assert 1 + 1 == 3, "this cell fails on purpose"', False),
    ('assert 1 + 1 == 2, "this cell passes"', True),     # control: the throwaway book is sound
])
def test_a_failing_chapter_fails_the_build(cell, should_build, tmp_path):
    """Same _config.yml, a one-chapter toc, one cell: the build fails exactly when the cell does."""
    book = tmp_path / "book_src"
    (book / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", book / "_config.yml")
    shutil.copy(ROOT / "book" / "references.bib", book / "book" / "references.bib")
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (book / "book" / "intro.md").write_text(THROWAWAY_CHAPTER.replace("CELL", cell))
    result = build_book(book, book, timeout=300)
    output = result.stdout + result.stderr
    if should_build:
        assert result.returncode == 0, f"the control book failed to build:\n{tail(output)}"
    else:
        assert result.returncode != 0, f"a failing cell did not fail the build:\n{tail(output)}"
        assert "AssertionError" in output and "this cell fails on purpose" in output

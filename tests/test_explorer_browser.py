"""The explorer page in a real browser: headless Chromium (the system's, driven by Playwright) opens it from disk,
with no console error, and choosing a layer, moving the threshold and top-k, hovering a token and switching views
change what is drawn, checked in the DOM and on the canvases' pixels.

With GINFORMER_EXPLORER_PAGES set to a folder of explorer pages, test_docs_screenshots writes a screenshot of
each, after a few interactions, to docs/graphs/explorer-<page name>.png (docs/graphs.md says how they are made)."""

import os
import re
import shutil
from pathlib import Path

import pytest

from test_attention_graphs import adapted
from test_explorer import TEXT

from ginformer.data.tokenizer import build_protein_tokenizer
from ginformer.viz.attention_graphs import attention_graphs
from ginformer.viz.explorer import explore

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

CHROMIUM = os.environ.get("GINFORMER_CHROMIUM") or next(
    (path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium to open the explorer page in: `apt-get install chromium` (bash .ci/run does), "
    "or point GINFORMER_CHROMIUM at one",
)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "graphs"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        # Playwright never downloads a browser here: it drives the system's. As root (CI) Chromium needs --no-sandbox.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def tokenizer():
    return build_protein_tokenizer()


@pytest.fixture(scope="module")
def model():
    return adapted(tau=0.1)


@pytest.fixture(scope="module")
def pages(tmp_path_factory, model, tokenizer) -> dict[str, Path]:
    """A tiny adapted model beside its base, stored in both precisions, the whole text in cells of 3 tokens."""
    folder = tmp_path_factory.mktemp("pages")
    return {
        precision: explore(model, tokenizer, TEXT, name="tiny", overview=20, precision=precision, progress=False).save(
            folder / f"{precision}.html"
        )
        for precision in ("uint8", "float16")
    }


def open_page(browser, path: Path, height: int = 1300):
    """The page opened from disk, and the console errors and uncaught exceptions it raises."""
    page = browser.new_page(viewport={"width": 1500, "height": height})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready=true]", timeout=20_000)
    return page, errors


def redrawn(page, action) -> None:
    """Do ``action`` and wait until the page has drawn again."""
    before = int(page.get_attribute("body", "data-renders"))
    action()
    page.wait_for_function(f"Number(document.body.dataset.renders) > {before}", timeout=10_000)


def slide(page, selector: str, value) -> None:
    """Move a range input as a user's drag ends: set its value, then the input event."""
    redrawn(page, lambda: page.eval_on_selector(
        selector, "(node, value) => { node.value = value; node.dispatchEvent(new Event('input')); }", value
    ))


def pixels(page, capture: str = "1", canvas: str = "zoom") -> str:
    return page.eval_on_selector(f"section[data-capture='{capture}'] canvas.{canvas}", "node => node.toDataURL()")


def edges(page, capture: str = "1") -> int:
    section = f"section[data-capture='{capture}']"
    drawn = int(page.get_attribute(section, "data-edges"))
    assert page.locator(f"{section} path.edge").count() == drawn
    return drawn


def test_the_page_opens_from_disk_without_errors(browser, pages):
    page, errors = open_page(browser, pages["uint8"])
    assert page.locator("section.capture").count() == 3  # the base, the adapted model, their difference
    assert page.locator("#grid button").count() == 2 * 5  # 2 layers × (Σ and 4 heads)
    names = page.locator("section.capture h2").all_inner_texts()
    assert names == ["tiny (base)", "tiny", "tiny − tiny (base)"]
    assert "λ" in page.inner_text("#scalars") and page.locator("#scalars tr[data-layer]").count() == 2
    assert edges(page) > 0
    page.close()
    assert errors == []


def test_choosing_another_layer_and_head_redraws(browser, pages):
    page, errors = open_page(browser, pages["uint8"])
    assert page.get_attribute("section[data-capture='1']", "data-layer") == "1"
    before = pixels(page)
    redrawn(page, lambda: page.click("#grid button[data-layer='0'][data-head='2']"))
    for capture in ("0", "1"):
        section = f"section[data-capture='{capture}']"
        assert (page.get_attribute(section, "data-layer"), page.get_attribute(section, "data-head")) == ("0", "2")
    assert page.inner_text("section[data-capture='1'] .kind").startswith("layer 0")
    assert pixels(page) != before
    assert "selected" in page.get_attribute("#grid button[data-layer='0'][data-head='2']", "class")
    redrawn(page, lambda: page.keyboard.press("ArrowDown"))  # the keyboard moves through the grid
    assert page.get_attribute("section[data-capture='1']", "data-layer") == "1"
    page.close()
    assert errors == []


def test_threshold_and_top_k_choose_the_edges_drawn(browser, pages):
    page, errors = open_page(browser, pages["uint8"])
    three = edges(page)
    slide(page, "#top-k", 1)
    one = edges(page)
    assert one == len(TEXT) - 1 < three  # every token after the first reads from at least one earlier token
    threshold = float(page.get_attribute("#threshold", "max")) / 2
    slide(page, "#threshold", threshold)
    strong = edges(page)
    assert 0 < strong < one
    weights = [float(w) for w in page.locator("section[data-capture='1'] path.edge").evaluate_all(
        "nodes => nodes.map(node => node.dataset.weight)")]
    assert min(weights) >= threshold - 1e-4
    page.close()
    assert errors == []


@pytest.mark.parametrize("precision, tolerance", [("uint8", None), ("float16", 2e-3)])
def test_hovering_a_token_shows_what_it_reads_from_and_what_reads_it(browser, pages, model, tokenizer, precision,
                                                                      tolerance):
    page, errors = open_page(browser, pages[precision])
    position = 30
    page.hover(f"section[data-capture='1'] .token[data-pos='{position}']")
    for capture in ("0", "1"):
        svg = f"section[data-capture='{capture}'] svg"
        assert "hovering" in page.get_attribute(svg, "class")
        marked = page.locator(f"{svg} path.edge").evaluate_all(
            "nodes => nodes.map(node => [node.dataset.from, node.dataset.to, node.getAttribute('class')])")
        reads = [edge for edge in marked if edge[1] == str(position)]
        assert reads and all("in" in edge[2].split() for edge in reads)  # what it reads from
        assert all(("out" in edge[2].split()) == (edge[0] == str(position)) for edge in marked)  # what reads it
        assert sum("in" in edge[2].split() for edge in marked) == len(reads)  # nothing else
    info = page.inner_text("#hover-info")
    assert f"“{TEXT[position]}” (token {position})" in info and "reads from" in info and "read by" in info
    assert page.locator("#hover-info .hovered-token").nth(1).locator(".read-by li").count() == 6
    # the weights shown are the captured ones, decoded by the page: the adapted model, layer 1, summed over heads
    heads = attention_graphs(model, tokenizer, TEXT).heads[1]
    strongest = float(heads.sum(0)[position].max())
    listed = page.locator("#hover-info .hovered-token").nth(1).locator(".reads li").first.inner_text()
    shown = float(listed.split()[-1])
    bound = tolerance or float(heads[:, position].amax(-1).sum()) / 255  # uint8: each head within its max / 255
    assert shown == pytest.approx(strongest, abs=bound + 5e-4)  # + the 3 decimals shown
    page.close()
    assert errors == []


def test_views_show_the_sparse_gin_stages_and_the_rollout(browser, pages):
    page, errors = open_page(browser, pages["uint8"])
    attention = pixels(page)
    redrawn(page, lambda: page.check("input[name=view][value=sparse]"))
    assert page.get_attribute("section[data-capture='1']", "data-view") == "sparse"
    assert page.is_visible("#stage-choice")
    assert page.inner_text("section[data-capture='1'] .zoom-title").startswith("causal mask")
    assert page.inner_text("section[data-capture='0'] .zoom-title").startswith("no adapter")
    stage = pixels(page)
    assert stage != attention
    redrawn(page, lambda: page.check("input[name=stage][value='4']"))  # A' − A_agg
    assert "a difference has no graph" in page.inner_text("section[data-capture='1'] .graph")
    assert pixels(page) != stage
    redrawn(page, lambda: page.check("input[name=view][value=rollout]"))
    assert page.inner_text("section[data-capture='1'] .zoom-title").startswith("attention rollout, layers 0–1")
    page.close()
    assert errors == []


def test_dragging_across_the_whole_text_chooses_the_tokens_shown(browser, pages):
    page, errors = open_page(browser, pages["uint8"])
    box = page.locator("section[data-capture='1'] canvas.overview").bounding_box()
    # the overview's cells fill the canvas right of a 30 px margin: 20 cells of 3 tokens
    left, inner = box["x"] + 30, 400 - 30 - 4
    redrawn(page, lambda: (
        page.mouse.move(left + inner * 5.5 / 20, box["y"] + 100),
        page.mouse.down(),
        page.mouse.move(left + inner * 9.5 / 20, box["y"] + 100),
        page.mouse.up(),
    ))
    assert (page.input_value("#range-from"), page.input_value("#range-to")) == ("15", "30")
    assert "tokens 15–29" in page.inner_text("section[data-capture='1'] .zoom-title")
    assert edges(page) > 0 and page.locator("section[data-capture='1'] .token").count() == 15
    page.close()
    assert errors == []


@pytest.mark.skipif(
    not os.environ.get("GINFORMER_EXPLORER_PAGES"),
    reason="set GINFORMER_EXPLORER_PAGES to a folder of explorer pages to screenshot them into docs/graphs",
)
def test_docs_screenshots(browser):
    folder = Path(os.environ["GINFORMER_EXPLORER_PAGES"])
    paths = sorted(folder.glob("*.html"))
    assert paths, f"no explorer page (*.html) in {folder}"
    for path in paths:
        page, errors = open_page(browser, path, height=3200)  # the whole page in view: nothing scrolls under the bar
        layers = page.locator("#grid button[data-head='sum']").evaluate_all("nodes => nodes.map(n => n.dataset.layer)")
        redrawn(page, lambda: page.click(f"#grid button[data-layer='{layers[len(layers) // 2]}'][data-head='3']"))
        redrawn(page, lambda: page.fill("#range-to", str(int(page.input_value("#range-from")) + 40))
                or page.dispatch_event("#range-to", "change"))
        token = page.locator("section[data-capture='0'] .token").nth(25)
        token.hover()
        match = re.search(r"sparse|adapter|gin", path.stem)
        if match and page.locator("input[name=view][value=sparse]").count():
            redrawn(page, lambda: page.check("input[name=view][value=sparse]"))
            token.hover()
        page.screenshot(path=DOCS / f"explorer-{path.stem}.png", full_page=True)
        page.close()
        assert errors == [], f"{path.name}: {errors}"

"""Screenshots of a Snakemake report as a reader sees it, in headless Chromium (not run in CI).

    apt-get install chromium && pip install playwright      # once, outside the project venv
    python tests/browser/report_screenshots.py report.html shots/

Opens the report, screenshots the landing page, then opens every category and subcategory of
the menu and every figure and table in it, one screenshot each (``shots/NN_<name>.png``), and
prints what it opened. It fails if a result listed in the report shows nothing (no image, no
table) or if the page logs an error. Look at the screenshots: a check that text is legible
and legends do not hide data is a reader's, not a script's.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip())[:60]


def main(report: str, out_dir: str) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    empty: list[str] = []
    opened = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        def open_path(*names: str) -> None:
            """From a freshly loaded report, click through the menu entries ``names``."""
            page.goto(Path(report).resolve().as_uri())
            page.wait_for_load_state("networkidle")
            for name in names:
                page.get_by_text(name, exact=True).first.click()
                page.wait_for_timeout(300)

        def shot(name: str) -> None:
            page.wait_for_timeout(500)
            page.screenshot(path=out / f"{len(list(out.glob('*.png'))):02d}_{slug(name)}.png")

        open_path()
        shot("landing")
        categories = page.locator("text=RESULTS >> xpath=following-sibling::*").all_inner_texts()
        for category in categories:
            open_path(category)
            # A category lists its subcategories, or directly its files (rows of a table).
            menu = [t for t in page.locator("li, a").all_inner_texts() if t.strip()]
            subcategories = list(dict.fromkeys(m for m in menu if m not in ("Results", category) and "/" not in m))
            subcategories = subcategories or [None]
            for sub in subcategories:
                path = (category, sub) if sub else (category,)
                open_path(*path)
                n_rows = page.locator("tr:has(a[iconname=eye])").count()
                for i in range(n_rows):
                    open_path(*path)
                    row = page.locator("tr:has(a[iconname=eye])").nth(i)
                    name = row.locator("td").first.inner_text()
                    row.locator("a[iconname=eye]").click()
                    shown = page.locator("img[src^='data:image/png'], img[src^='data:image/svg'], iframe")
                    if not any(e.is_visible() for e in shown.all()):
                        empty.append(name)
                    shot(f"{category}_{name.rsplit('/', 1)[-1]}")
                    opened += 1
                    print("opened", " / ".join(x for x in path if x), "/", name)
        browser.close()
    for e in errors:
        print("page error:", e, file=sys.stderr)
    for name in empty:
        print("shows nothing:", name, file=sys.stderr)
    print(f"{opened} results opened, {len(empty)} empty, {len(errors)} page errors")
    return 1 if errors or empty or not opened else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

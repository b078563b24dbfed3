"""Full-page screenshots of tuneforge HTML reports in headless Chromium, to look at them as a person would.

    python benchmarks/report_screenshots.py runs/a/report.html report-compare.html --out shots/

Writes one PNG per report (same stem). Chromium is the system one (/usr/bin/chromium, override with --chromium);
network access is blocked for the page, so a report that needs anything from outside shows it as broken."""
from __future__ import annotations

import argparse
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def screenshot(pages: list[Path], out_dir: Path, chromium: str = "/usr/bin/chromium", width: int = 1200) -> list[Path]:
    """Returns the PNG paths; raises if a page requested anything that is not inline (data:) or the file itself."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        for html in pages:
            page = browser.new_page(viewport={"width": width, "height": 900})
            outside: list[str] = []

            def only_local(route, outside=outside) -> None:  # the report must not need the network
                url = route.request.url
                if url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    outside.append(url)
                    route.abort()

            page.route("**/*", only_local)
            page.goto(html.resolve().as_uri(), wait_until="load")
            if outside:
                raise RuntimeError(f"{html} requested external resources: {outside[:3]}")
            shot = out_dir / f"{html.stem}-{html.parent.name}.png"
            page.screenshot(path=str(shot), full_page=True)
            page.close()
            shots.append(shot)
        browser.close()
    return shots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pages", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("report-screenshots"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=1200)
    a = ap.parse_args()
    for shot in screenshot(a.pages, a.out, a.chromium, a.width):
        print(shot)


if __name__ == "__main__":
    main()

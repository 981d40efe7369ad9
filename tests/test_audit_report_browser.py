"""The HTML exchange report as an auditor sees it: made by `masb audit report` from a real log on
Apache Kafka, opened in headless Chromium (Debian's package, driven by Playwright; no browser is
ever downloaded), with every request the page makes routed and refused unless it is a data: URL."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from agents.cli import main
from streams.partner import ReceiptSender
from tests.harness import demo_event, run, running_deployment
from tests.test_audit_kafka import audit_args, wait_covered

CHROMIUM = Path("/usr/bin/chromium")
# What works here as root, in containers, with nothing reachable: no sandbox, no GPU, no network
# helpers. Playwright adds --headless and a fresh --user-data-dir of its own to each launch.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHARTS = ("exchanges", "deadlines-agency", "deadlines-agreement", "refusals")

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium): "
                                                     "`apt-get install -y chromium` (.ci/run does it)"),
]


@pytest.fixture(scope="module")
def reports(kafka, tmp_path_factory):
    """HTML and JSON reports of a log holding the demo's DASH, MARAC, Operation Encompass and
    protection notice events, one agency's receipts, a garbage record, and a signed checkpoint."""
    out = tmp_path_factory.mktemp("report")
    with running_deployment(kafka, out / "deployment") as running:
        dash, marac, child, notice = (demo_event(n) for n in (
            "01_dash_worcestershire", "02_marac_worcestershire", "03_child_notification_worcestershire",
            "04_protection_notice_shropshire"))
        running.publish(dash, marac, child)
        running.publish(notice)
        running.send_raw(b"k", b"not a publication")
        ids = {e["header"]["event_id"] for e in (dash, marac, child, notice)}
        running.wait_audit(lambda e: e["kind"] == "DELIVERY" and e["event_id"] == notice["header"]["event_id"])
        running.wait_audit(lambda e: e["kind"] == "REFUSAL")
        received = [i.envelope for i in running.feed("nhs-worcs-acute") if i.ok and i.envelope.event_id in ids]
        assert received

        async def acknowledge() -> None:
            key = running.keyring("nhs-worcs-acute").current
            async with ReceiptSender(running.bootstrap, running.policy, key, running.topics) as receipts:
                for envelope in received:
                    await receipts.send(envelope, "RECEIVED")

        run(acknowledge())
        running.wait_for(lambda: len([e for e in running.audit_entries() if e["kind"] == "RECEIPT"]) == len(received),
                         what="the receipts in the audit log")
        wait_covered(running)
        keys = ["--keys-dir", str(running.deployment.keys_dir)]
        files = {}
        for name, extra in (("all", []), ("case", ["--case-ref", dash["header"]["case_ref"]])):
            for fmt in ("html", "json"):
                path = out / f"{name}.{fmt}"
                assert main(audit_args(running, "report", "--format", fmt, "--out", str(path), *keys, *extra)) == 0
                files[f"{name}.{fmt}"] = path.read_text(encoding="utf-8")
        yield {"html": files["all.html"], "doc": json.loads(files["all.json"]), "case_html": files["case.html"],
               "case_doc": json.loads(files["case.json"]), "events": (dash, marac, child, notice), "dir": out}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Opened:
    """A report page at 1280 x 900, recording console errors and every request it tried to make."""

    def __init__(self, browser, html: str, javascript: bool = True) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=javascript)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.context.route("**/*", self._route)
        self.page.set_content(html, wait_until="load")

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith("data:"):
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()

    def close(self) -> None:
        self.context.close()

    def check_self_contained(self) -> None:
        assert self.requests == [], f"the page tried to load {self.requests}"
        assert self.errors == [], self.errors
        widths = self.page.evaluate("""() => ({page: document.documentElement.scrollWidth,
            tables: [...document.querySelectorAll('table')].map(t => t.scrollWidth - t.parentElement.clientWidth)})""")
        assert widths["page"] <= 1280 and all(w <= 0 for w in widths["tables"]), widths


@pytest.fixture
def opened(browser):
    pages: list[Opened] = []

    def open_(html: str, javascript: bool = True) -> Opened:
        pages.append(Opened(browser, html, javascript))
        return pages[-1]

    yield open_
    for p in pages:
        p.close()


def test_head_says_the_log_verified_against_which_checkpoint(reports, opened) -> None:
    view = opened(reports["html"])
    doc = reports["doc"]
    banner = view.page.locator("#verification")
    assert banner.locator(".verdict").inner_text() == "Log verified: intact"
    text = banner.inner_text()
    checkpoint = doc["log"]["checkpoint"]
    assert f"size {checkpoint['size']}" in text and checkpoint["root"] in text and checkpoint["origin"] in text
    assert "Witness cosignatures" in text
    scope = view.page.locator(".scope").inner_text()
    assert "Generated" in scope and f"by MASB {doc['masb_version']}" in scope and "(the whole log)" in scope
    view.check_self_contained()


def test_each_chart_is_drawn_with_what_it_counts(reports, opened) -> None:
    view = opened(reports["html"])
    summary = reports["doc"]["summary"]
    expected = {"exchanges": set(summary["exchanges_by_agency"]),
                "deadlines-agency": set(summary["deadlines_by_agency"]) | {"received on time", "escalated"},
                "deadlines-agreement": set(summary["deadlines_by_agreement"]),
                "refusals": set(summary["refusals_by_reason"])}
    assert all(expected.values())
    for chart in CHARTS:
        svg = view.page.locator(f'figure[data-chart="{chart}"] svg')
        assert svg.count() == 1, chart
        box = svg.bounding_box()
        assert box["width"] > 600 and box["height"] > 150, (chart, box)
        labels = {t.strip() for t in svg.locator("text").all_text_contents()}
        assert expected[chart] <= labels, (chart, expected[chart] - labels)
    view.check_self_contained()


def test_filtering_the_table_to_one_agency_shows_only_its_rows(reports, opened) -> None:
    view = opened(reports["html"])
    page = view.page
    deliveries = reports["doc"]["deliveries"]
    agency = "nhs-worcs-acute"
    mine = [r for r in deliveries if r["agency"] == agency]
    assert 0 < len(mine) < len(deliveries)
    rows = page.locator("#exchange-table tbody tr:visible")
    assert rows.count() == len(deliveries)
    page.select_option("#filter-agency", agency)
    assert rows.count() == len(mine)
    assert set(rows.locator("td:nth-child(2)").all_inner_texts()) == {agency}
    assert page.locator("#exchange-count").inner_text() == \
        f"Showing {len(mine)} of {len(deliveries)} exchanges (filtered in the page)"
    page.select_option("#filter-deadline", "received on time")  # its receipts came within the deadline
    assert rows.count() == len(mine)
    page.select_option("#filter-deadline", "awaiting receipt")
    assert rows.count() == 0
    page.click("#exchange-controls button[type=reset]")
    assert rows.count() == len(deliveries)
    # Sorting: the log entry column, twice, is descending.
    page.click('th[data-column="entry"] button')
    page.click('th[data-column="entry"] button')
    entries = [int(t.split()[0]) for t in rows.locator("td:nth-child(8)").all_inner_texts()]
    assert entries == sorted((r["entry"] for r in deliveries), reverse=True)
    view.check_self_contained()


def test_without_javascript_it_is_a_plain_complete_table(reports, opened) -> None:
    view = opened(reports["html"], javascript=False)
    assert view.page.locator("#exchange-table tbody tr:visible").count() == len(reports["doc"]["deliveries"])
    assert not view.page.locator("#exchange-controls").is_visible()
    view.check_self_contained()


def test_case_view_runs_in_time_order_with_fields_agreement_and_legal_basis(reports, opened) -> None:
    view = opened(reports["case_html"])
    dash, marac, child, _ = reports["events"]
    steps = view.page.locator("#case-timeline-steps li")
    times = steps.locator("time").evaluate_all("ts => ts.map(t => t.getAttribute('datetime'))")
    assert len(times) == len(reports["case_doc"]["case_timeline"]) and times == sorted(times)
    kinds = steps.evaluate_all("ls => ls.map(l => l.dataset.step)")
    assert kinds[0] == "routed" and "received" in kinds
    routed = {e["header"]["event_id"] for e in (dash, marac, child)}  # the case's three events
    assert set(steps.evaluate_all("ls => ls.filter(l => l.dataset.step == 'routed').map(l => l.dataset.event)")) \
        == routed
    for row in reports["case_doc"]["deliveries"]:
        text = view.page.locator(f'#case-timeline-steps li[data-step="delivered"][data-event="{row["event_id"]}"]',
                                 has_text=row["agency"]).inner_text()
        assert row["legal_basis_label"] in text and row["agreement"] in text and ", ".join(row["fields"]) in text
    view.check_self_contained()
    # Field names only, never values; and no other case.
    for html in (reports["html"], reports["case_html"]):
        assert dash["victim"]["name"] not in html
    assert reports["events"][3]["header"]["case_ref"] not in reports["case_html"]


def test_printed_every_page_carries_the_marking_and_the_verification(reports, opened) -> None:
    from pypdf import PdfReader

    view = opened(reports["html"])
    pdf = PdfReader(io.BytesIO(view.page.pdf(prefer_css_page_size=True, print_background=True)))
    assert len(pdf.pages) > 1
    size = reports["doc"]["log"]["checkpoint"]["size"]
    for number, page in enumerate(pdf.pages, start=1):
        text = "".join(page.extract_text().split())  # the marking is letter-spaced
        assert text.count("OFFICIAL-SENSITIVE") >= 2, number  # at the top and at the bottom
        assert "Logverified:intactagainstcheckpoint" in text and f"(size{size}," in text, number
    view.page.screenshot(path=str(reports["dir"] / "report.png"))  # for people looking at a failed run

"""``serve --demo``: the whole flow on a running server, set up through its own HTTP API.

Once the server listens, a background thread does what a user would do with curl: it uploads the example
UDFs of the repository's ``udfs/`` folder as Python source in source mode (``?mode=source``: no build, they
run on the shared interpreter component, which the first use on a machine builds and compiles once),
stores a document, a query and a result pipeline that use them (the document pipeline with a condition and
a failure handler), creates a ``products`` index naming the three, with its failure store on, and
bulk-indexes a small catalogue through the document pipeline: a product the pipeline refuses is kept in the
failure store. What exists already is skipped, so a restart on the same data directory is ready at once.
Then it prints curl commands to try.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import orjson
from rich.console import Console

from ..errors import QuidditchError

__all__ = ["DEMO_INDEX", "find_udf_dir", "run_demo"]

DEMO_INDEX: Final = "products"
UDF_VERSION: Final = "1.0.0"
UDFS: Final = ("title_normalizer", "spam_filter", "price_band", "strict_parser", "query_synonyms", "recency_boost")

SYNONYMS: Final = {
    "laptop": ["notebook"],
    "notebook": ["laptop"],
    "phone": ["smartphone"],
    "smartphone": ["phone"],
    "tv": ["television"],
    "television": ["tv"],
}

PIPELINES: Final[dict[str, dict[str, Any]]] = {
    "products-ingest": {
        "version": "1.0.0",
        "type": "document",
        "description": "normalise titles, drop spam, refuse malformed products, add a price band, mark bargains",
        "stages": [
            {"name": "normalize", "type": "python",
             "config": {"udf_name": "title_normalizer", "parameters": {"keep": ["USB", "USB-C", "4K", "TV"]}}},
            {"name": "spam", "type": "python", "config": {"udf_name": "spam_filter"}},
            {"name": "validate", "type": "python", "on_failure": "abort",
             "config": {"udf_name": "strict_parser", "parameters": {"schema": {"title": "str", "price": "number"}}}},
            {"name": "band", "type": "python", "config": {"udf_name": "price_band"}},
            # A condition (CEL): only cheap products are marked.
            {"name": "bargain", "type": "native", "if": "ctx.price < 50",
             "config": {"processor": "set", "field": "bargain", "value": True}},
            # A failure handler: a product without a category gets one instead of failing.
            {"name": "category", "type": "native", "tag": "category-case",
             "config": {"processor": "lowercase", "field": "category"},
             "on_failure": [{"name": "uncategorized", "type": "native",
                             "config": {"processor": "set", "field": "category", "value": "uncategorized"}}]},
        ],
    },
    "products-search": {
        "version": "1.0.0",
        "type": "query",
        "description": "expand match queries with synonyms",
        "stages": [
            {"name": "synonyms", "type": "python",
             "config": {"udf_name": "query_synonyms", "parameters": {"synonyms": SYNONYMS}}},
        ],
    },
    "products-rank": {
        "version": "1.0.0",
        "type": "result",
        "description": "boost products published in the last 30 days",
        "stages": [
            {"name": "recency", "type": "python",
             "config": {"udf_name": "recency_boost", "parameters": {"days": 30, "boost": 2.0, "decay": 0.2}}},
        ],
    },
}  # fmt: skip

# (title, body, category, price, published how many days ago)
_CATALOGUE: Final = [
    ("apple macbook air 13 laptop", "light laptop for travel, 18 hours of battery", "Computers", 1099, 12),
    ("lenovo thinkpad x1 carbon", "business notebook with a great keyboard", "Computers", 1499, 200),
    ("dell xps 15 notebook", "a 15 inch laptop with a 4K screen", "Computers", 1899, 45),
    ("  acer   aspire 5  ", "budget laptop for students", "Computers", 549, 3),
    ("samsung galaxy s24 smartphone", "android phone with a great camera", "Phones", 899, 20),
    ("google pixel 8 phone", "a phone with the cleanest android", "Phones", 699, 120),
    ("iphone 15", "apple smartphone, usb-c at last", "Phones", 999, 8),
    ("lg oled 55 inch tv", "a 4K television with perfect blacks", "TV", 1299, 60),
    ("sony bravia 65 television", "big 4K tv for the living room", "TV", 1799, 5),
    ("anker usb-c cable 2m", "braided usb-c to usb-c cable", "Accessories", 15, 90),
    ("logitech mx master 3s mouse", "the mouse for people who work all day", "Accessories", 99, 15),
    ("keychron k2 keyboard", "wireless mechanical keyboard for mac and pc", "Accessories", 79, 400),
    ("kindle paperwhite", "e-reader with a warm light", "Tablets", 149, 30),
    ("ipad air", "tablet with the m2 chip", "Tablets", 599, 2),
    ("bose quietcomfort headphones", "noise cancelling for the commute", "Audio", 349, 25),
]
# Two that the spam filter drops and one that the strict parser refuses (no price): per-item results.
_REJECTS: Final[list[tuple[str, dict[str, Any]]]] = [
    ("spam-1", {"title": "BUY NOW cheap watches", "body": "click here for a limited offer", "price": 1}),
    ("spam-2", {"title": "FREE MONEY", "body": "http://a http://b http://c http://d", "price": 0}),
    ("no-price", {"title": "mystery box", "body": "what is inside?", "category": "Misc"}),
]


def sample_documents(today: datetime.date | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The demo catalogue: ``(id, source)`` pairs, publication dates counted back from ``today``."""
    today = today or datetime.date.today()
    documents = [
        (
            f"p{number:02d}",
            {
                "title": title,
                "body": body,
                "category": category,
                "price": price,
                "published": (today - datetime.timedelta(days=age)).isoformat(),
            },
        )
        for number, (title, body, category, price, age) in enumerate(_CATALOGUE, 1)
    ]
    return documents + [(doc_id, dict(source)) for doc_id, source in _REJECTS]


def find_udf_dir() -> Path | None:
    """The example UDFs: ``./udfs``, else the repository's ``udfs/`` beside the package."""
    for candidate in (Path.cwd() / "udfs", Path(__file__).resolve().parents[2] / "udfs"):
        if all((candidate / f"{name}.py").is_file() for name in UDFS):
            return candidate
    return None


class _Api:
    """A tiny JSON client of the server (the standard library's urllib: the demo needs nothing more)."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self._base = base_url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else None if body is None else orjson.dumps(body)
        headers = {**self._headers, "Content-Type": content_type}
        request = urllib.request.Request(self._base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        return status, orjson.loads(raw) if raw else None

    def require(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        status, answer = self.call(method, path, body, **options)
        if status >= 300:
            reason = answer["error"]["reason"] if isinstance(answer, dict) and "error" in answer else answer
            raise QuidditchError(f"{method} {path} answered {status}: {reason}")
        return answer


def run_demo(
    base_url: str,
    *,
    token: str | None,
    console: Console,
    udf_dir: Path,
    ready: Callable[[], bool],
    stop: threading.Event,
) -> None:
    """Wait for the server (``ready``), then set the demo up through its API and print what to try."""
    while not ready():
        if stop.wait(0.05):
            return
    api = _Api(base_url, token)
    try:
        _register_udfs(api, console, udf_dir)
        for name, definition in PIPELINES.items():
            if api.call("GET", f"/_pipeline/{name}")[0] == 404:
                api.require("PUT", f"/_pipeline/{name}", definition)
                console.print(f"demo: stored pipeline [bold]{name}[/] ({definition['type']})", highlight=False)
        if api.call("HEAD", f"/{DEMO_INDEX}")[0] == 404:
            _create_index(api, console)
    except (QuidditchError, OSError) as exc:
        message = exc.message if isinstance(exc, QuidditchError) else str(exc)
        console.print(f"[bold red]demo: setup failed:[/] {message}", highlight=False)
        return
    console.print(examples(base_url, token=token is not None), highlight=False, soft_wrap=True)


def _register_udfs(api: _Api, console: Console, udf_dir: Path) -> None:
    missing = []
    for name in UDFS:
        status, answer = api.call("GET", f"/_udf/{name}")
        if status == 200 and any(v["version"] == UDF_VERSION for v in answer["versions"]):
            continue
        missing.append(name)
    if not missing:
        console.print(f"demo: the {len(UDFS)} example UDFs are registered already", highlight=False)
        return
    workers = max(1, min(len(missing), os.cpu_count() or 1))
    console.print(
        f"demo: registering {len(missing)} example UDFs in source mode (unless `quidditch-pipeline udf prepare` "
        "ran at install, the first time on this machine builds and compiles the shared interpreter first: a "
        "minute or two)…",
        highlight=False,
    )
    started = time.monotonic()

    def build(name: str) -> None:
        source = (udf_dir / f"{name}.py").read_bytes()
        api.require("PUT", f"/_udf/{name}/{UDF_VERSION}?mode=source", source, content_type="text/x-python")
        done = time.monotonic() - started
        console.print(f"demo: [green]✓[/] UDF [bold]{name}[/] {UDF_VERSION} ready after {done:.0f} s", highlight=False)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-udf") as pool:
        for future in [pool.submit(build, name) for name in missing]:
            future.result()


def _create_index(api: _Api, console: Console) -> None:
    settings = {
        "index": {
            "document": {"default_pipeline": "products-ingest"},
            "query": {"default_pipeline": "products-search"},
            "result": {"default_pipeline": "products-rank"},
            # What the document pipeline refuses is kept, as it arrived, in products::failures.
            "failure_store": {"enabled": True},
        }
    }
    api.require("PUT", f"/{DEMO_INDEX}", {"settings": settings})
    lines = b"".join(
        orjson.dumps({"index": {"_id": doc_id}}) + b"\n" + orjson.dumps(source) + b"\n"
        for doc_id, source in sample_documents()
    )
    answer = api.require("POST", f"/{DEMO_INDEX}/_bulk?refresh=true", lines, content_type="application/x-ndjson")
    results = [item["index"] for item in answer["items"]]
    created = sum(1 for r in results if r.get("result") == "created")
    dropped = [r["_id"] for r in results if r.get("result") == "noop"]
    kept = [doc_id for (doc_id, _), r in zip(sample_documents(), results, strict=True) if r.get("failure_store")]
    console.print(
        f"demo: index [bold]{DEMO_INDEX}[/]: {created - len(kept)} products indexed, {len(dropped)} dropped as spam "
        f"({', '.join(dropped)}), {len(kept)} refused by the strict parser and kept in the failure store "
        f"({', '.join(kept)})",
        highlight=False,
    )


def examples(base_url: str, *, token: bool) -> str:
    """curl commands that show the flow on the demo index."""
    json_header = "-H 'Content-Type: application/json'"
    admin = ' -H "Authorization: Bearer $QUIDDITCH_ADMIN_TOKEN"' if token else ""
    url = base_url
    return "\n".join(
        [
            "",
            "[bold]demo ready.[/] Try:",
            "  # search: the query pipeline adds synonyms (laptop -> notebook), the result pipeline boosts "
            "recent products",
            f"  curl -s '{url}/{DEMO_INDEX}/_search?pretty' {json_header} "
            '-d \'{"query": {"match": {"title": "laptop"}}}\'',
            "  # the same search without the pipelines",
            f"  curl -s '{url}/{DEMO_INDEX}/_search?pretty&search_pipeline=_none' {json_header} "
            '-d \'{"query": {"match": {"title": "laptop"}}}\'',
            "  # index a document: the title is normalised and a price band added",
            f"  curl -s -X PUT '{url}/{DEMO_INDEX}/_doc/42?pretty' {json_header} "
            '-d \'{"title": "  anker   USB-C charger ", "price": 35}\'',
            "  # cheap, it is marked (a condition: ctx.price < 50); without a category, a failure handler set one",
            f"  curl -s '{url}/{DEMO_INDEX}/_doc/42?pretty'",
            "  # spam is dropped (result: noop); a product without a price is refused and kept in the failure store",
            f"  curl -s -X PUT '{url}/{DEMO_INDEX}/_doc/43?pretty' {json_header} "
            '-d \'{"title": "BUY NOW cheap watches", "price": 5}\'',
            f"  curl -s -X PUT '{url}/{DEMO_INDEX}/_doc/44?pretty&refresh=true' {json_header} "
            '-d \'{"title": "mystery"}\'',
            "  # the failures, as they arrived, with the error, the stage and the pipelines they went through",
            f"  curl -s '{url}/{DEMO_INDEX}::failures/_search?pretty'",
            "  # what a write would do, stage by stage, without writing",
            f"  curl -s -X POST '{url}/{DEMO_INDEX}/_simulate?pretty' {json_header} "
            '-d \'{"docs": [{"_id": "45", "_source": {"title": "usb hub", "price": 20}}]}\'',
            "  # after fixing the pipeline: run the failures again (those that now pass are indexed and leave "
            "the store)",
            f"  curl -s -X POST '{url}/{DEMO_INDEX}/_failure_store/_reprocess?pretty'",
            "  # what the pipelines did so far",
            f"  curl -s '{url}/_pipeline/products-ingest/_stats?pretty'",
            "  # try a pipeline on a sample input, stage by stage",
            f"  curl -s -X POST '{url}/_pipeline/products-search/_execute?pretty' {json_header}{admin} "
            '-d \'{"input": {"query": {"match": {"title": "phone"}}}}\'',
            "",
        ]
    )

"""`--log-format json`: one JSON object per line, carrying `endpoint`, `region` and
`generation` where the log call is about one endpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from servefleet.cli.logs import JsonFormatter
from tests.scenarios.harness import demo_spec, local_fleet, manifest


def test_a_line_carries_the_fields_its_call_gave_and_no_others() -> None:
    """Verify the shape of one line, with and without fields and with a traceback."""
    logger = logging.getLogger("servefleet.test")
    about = logger.makeRecord(
        logger.name,
        logging.INFO,
        __file__,
        1,
        "%s/%s: applied generation %d",
        ("r1", "llm", 3),
        None,
        extra={"region": "r1", "endpoint": "llm", "generation": 3},
    )
    line = JsonFormatter().format(about)
    assert "\n" not in line
    entry = json.loads(line)
    assert (
        entry.items()
        >= {
            "level": "info",
            "logger": "servefleet.test",
            "message": "r1/llm: applied generation 3",
            "region": "r1",
            "endpoint": "llm",
            "generation": 3,
        }.items()
    )

    try:
        raise ValueError("broken\nacross lines")
    except ValueError as error:
        failed = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "plain", (), (type(error), error, None)
        )
    entry = json.loads(JsonFormatter().format(failed))
    assert not entry.keys() & {"region", "endpoint", "generation"}
    assert "broken\nacross lines" in entry["error"]


async def test_the_reconciler_logs_its_endpoint_region_and_generation(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Verify that the reconciler's lines about an endpoint, formatted as JSON, parse
    and name the endpoint, the region and the generation applied."""
    caplog.set_level(logging.INFO, logger="servefleet")
    async with local_fleet(sqlite_url, tmp_path) as fleet:
        await fleet.service.apply(manifest("logged", demo_spec(replicas=1), ["r1"]))
        await fleet.settled("logged", replicas=1)

    entries = [json.loads(JsonFormatter().format(record)) for record in caplog.records]
    applied = [entry for entry in entries if "applied generation" in entry["message"]]
    assert applied
    assert applied[0].items() >= {"endpoint": "logged", "region": "r1", "generation": 1}.items()

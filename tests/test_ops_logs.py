"""Structured logs, and the masking of card numbers, mobile numbers and resident IDs."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from ops.logs import configure_logging, mask


@pytest.mark.parametrize("pan", ["6222021234567890", "4111 1111 1111 1111", "5500-0000-0000-0004",
                                 "6212345678901234567", "4222222222222", "3782 822463 10005"])
def test_card_numbers_are_masked(pan: str) -> None:
    masked = mask(f"payment with card {pan} declined")
    digits = "".join(c for c in pan if c.isdigit())
    assert digits not in masked.replace(" ", "").replace("-", "")
    assert masked.endswith(f"{digits[-4:]} declined") and "*" * (len(digits) - 4) in masked


@pytest.mark.parametrize("phone", ["13812345678", "138-1234-5678", "199 8765 4321", "+8615012345678"])
def test_mobile_numbers_are_masked(phone: str) -> None:
    masked = mask(f"contact changed to {phone}.")
    digits = "".join(c for c in phone if c.isdigit())[-11:]
    assert digits not in "".join(c for c in masked if c.isdigit())
    assert digits[-4:] in masked and "****" in masked


@pytest.mark.parametrize("resident_id", ["110105194912310021", "11010519491231002X", "44030620001231123x"])
def test_resident_id_numbers_are_masked(resident_id: str) -> None:
    masked = mask(f"kyc id={resident_id};")
    assert resident_id not in masked and resident_id[:14] not in masked
    assert masked == f"kyc id={'*' * 14}{resident_id[-4:]};"


def test_ordinary_numbers_and_ids_are_left_alone() -> None:
    text = "event e-000123 offset 4567 amount 4,480.00 at 2026-01-05T11:56:33.860Z partition 3 c000248"
    assert mask(text) == text


def test_json_logs_carry_level_logger_step_and_event_id_and_are_masked() -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", stream)
    try:
        log = logging.getLogger("crm.test")
        log.info("rejected card %s for %s", "6222021234567890", "13812345678",
                 extra={"step": "events_in", "event_id": "e-1"})
        try:
            raise ValueError("bad id 11010519491231002X")
        except ValueError:
            log.exception("failed", extra={"step": "customer_profile"})
        log.debug("not shown")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["level"] == "INFO" and first["logger"] == "crm.test"
    assert first["step"] == "events_in" and first["event_id"] == "e-1"
    assert first["message"] == "rejected card ************7890 for 138****5678"
    assert second["level"] == "ERROR" and second["step"] == "customer_profile"
    assert "ValueError" in second["exception"] and "11010519491231002X" not in stream.getvalue()
    assert "6222021234567890" not in stream.getvalue() and "13812345678" not in stream.getvalue()


def test_text_logs_are_masked_too() -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "text", stream)
    try:
        logging.getLogger("crm.test").warning("card %s", "4111111111111111")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "4111111111111111" not in stream.getvalue() and "************1111" in stream.getvalue()

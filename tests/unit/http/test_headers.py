"""The per-request deadline a caller may ask for with x-request-timeout-seconds."""

from __future__ import annotations

import pytest

from serve_app.errors import BadInput
from serve_app.http.headers import request_timeout_s


def test_without_the_header_the_configured_deadline_holds() -> None:
    assert request_timeout_s(None, 60.0) == 60.0


def test_a_shorter_deadline_ends_before_the_proxys_own_timeout() -> None:
    assert request_timeout_s("4", 60.0) == pytest.approx(3.6)
    assert request_timeout_s("30", 60.0) == pytest.approx(29.5)
    # At least 0.25 s of margin, for the error to reach the caller before the proxy cuts.
    assert request_timeout_s("1", 60.0) == pytest.approx(0.75)
    assert request_timeout_s("2", 60.0) == pytest.approx(1.75)


@pytest.mark.parametrize("value", ["0.05", "0.1", "0.2", "0.3", "0.5", "0.9999"])
def test_a_deadline_under_the_floor_is_a_client_error_naming_it(value: str) -> None:
    with pytest.raises(BadInput, match=r"at least 1 s"):
        request_timeout_s(value, 60.0)


def test_a_longer_deadline_is_capped_by_the_configured_one() -> None:
    assert request_timeout_s("600", 60.0) == 60.0


@pytest.mark.parametrize("value", ["0", "-5"])
def test_zero_or_less_means_no_caller_deadline(value: str) -> None:
    assert request_timeout_s(value, 60.0) == 60.0


@pytest.mark.parametrize("value", ["soon", "", "nan", "inf", "1e999"])
def test_anything_but_a_finite_number_is_a_client_error(value: str) -> None:
    with pytest.raises(BadInput, match="x-request-timeout-seconds"):
        request_timeout_s(value, 60.0)

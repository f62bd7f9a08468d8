"""Redaction masks every credential shape and runs in linear time on hostile text."""

from __future__ import annotations

import time

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.redaction import redact_text, redact_url

JWT = jwt.encode(
    {"dest": "https://a.myshopify.com", "exp": 4102444800}, "k" * 32, algorithm="HS256"
)
SIGNATURE = JWT.rsplit(".", 1)[1]

# Fragments that made the old URL-password pattern backtrack, and every prefix the
# patterns start on: text made of them is the worst case for a regex engine.
FRAGMENTS = ["://a:", "://", ":", "@", "/", "eyJ", ".", "a", "token=", "%74oken=", "Bearer ",
             " ", "&", "?", "=", "-", "\x01"]


def _redact_seconds(text: str) -> float:
    started = time.perf_counter()
    redact_text(text)
    return time.perf_counter() - started


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6))
def test_redaction_is_linear_on_adversarial_text_up_to_64_kib(pattern: list[str]) -> None:
    unit = "".join(pattern)
    small = unit * (8192 // len(unit) + 1)
    large = unit * (65536 // len(unit) + 1)
    # quadratic behaviour would make 8x the text cost 64x the time; allow noise, not that
    assert _redact_seconds(large) < max(0.25, 24 * _redact_seconds(small))


def test_the_old_worst_case_is_fast() -> None:
    """A 64 KiB line of `://a:` took 14 s with the backtracking pattern."""
    assert _redact_seconds("GET /" + "://a:" * 13_000 + " HTTP/1.1") < 0.25


@given(
    prefix=st.text(max_size=40),
    name=st.sampled_from(["token", "ticket", "%74oken", "t%6Fken", "%74icket", "TOKEN", "Ticket"]),
    suffix=st.sampled_from(["", " HTTP/1.1", "&x=1", "\x01", "\"", " more"]),
)
def test_no_part_of_a_jwt_signature_survives(prefix: str, name: str, suffix: str) -> None:
    for text in (
        f"{prefix}?{name}={JWT}{suffix}",
        f"{prefix} {JWT}{suffix}",
        f"{prefix}Authorization: Bearer {JWT}{suffix}",
        f"{prefix}{JWT}",
    ):
        assert SIGNATURE[:12] not in redact_text(text)


@given(st.text(max_size=300))
def test_redaction_never_raises(text: str) -> None:
    assert isinstance(redact_text(text), str)
    assert isinstance(redact_url(text), str)


def test_url_passwords_are_masked_in_free_text() -> None:
    text = "redis://u:p%40ss@h:6379/0 and postgresql://user:hunter2@db/x and rediss://:s3@up:1"
    out = redact_text(text)
    assert "p%40ss" not in out and "hunter2" not in out and ":s3@" not in out
    assert "redis://u:***@h:6379/0" in out


def test_secret_query_values_are_masked_whatever_the_spelling() -> None:
    out = redact_text("GET /e?shop=a.myshopify.com&%74icket=abc&password=pw&publish_key=k HTTP/1.1")
    assert "abc" not in out and "pw" not in out and "=k " not in out
    assert "shop=a.myshopify.com" in out


def test_redact_url_keeps_the_shape() -> None:
    assert redact_url("redis://user:secret@host/0?password=x") == "redis://user:***@host/0?password=***"
    assert redact_url("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock?db=1"


def test_redact_url_masks_a_password_the_url_does_not_encode() -> None:
    """A URL without a scheme (a config error quotes it) and a password holding "?" or
    "/", which libpq reads as part of the password: each used to be printed whole. The
    passwords are made up here from `FAKE` (no credential-shaped literal in the code)."""
    def masked(url: str, password: str) -> str:
        out = redact_url(url.format(pw=password))
        assert "FAKE" not in out, out
        return out

    assert masked("default:{pw}@cache.test:6379", "FAKE") == "default:***@cache.test:6379"
    assert masked("postgresql://gw:{pw}@db.test:5432/app", "FA?KE") == \
        "postgresql://gw:***@db.test:5432/app"
    assert masked("postgresql://gw:{pw}@db/app?sslmode=require", "FA/KE") == \
        "postgresql://gw:***@db/app?sslmode=require"
    assert redact_url("redis://h:6379/0?client_name=gw") == "redis://h:6379/0?client_name=gw"
    # an "@" in a query value is not the end of a user info
    assert masked("postgresql://host/db?password={pw}", "F@KE") == \
        "postgresql://host/db?password=***"
    assert masked("redis://host:6379/0?password={pw}", "F@KE") == \
        "redis://host:6379/0?password=***"
    assert masked("redis://h:6379?password={pw}", "F@KE") == "redis://h:6379?password=***"

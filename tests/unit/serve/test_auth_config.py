"""Auth settings cannot fail open: a token variable that holds no token, a short or malformed
token, an unreadable token file, or a public host without tokens is an error; no token is ever
shown in an error or a repr."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.errors import ConfigError
from serve.app import check_exposure

GOOD = "good-token-0123456789"


@pytest.mark.parametrize(
    "raw", ["", " , ", ",", "[]", "x7q9z", "a b c d e f g h i j k l m n", '["aaaaaaaaaaaaaaaaaaaaaa"]']
)
def test_a_token_variable_that_yields_no_valid_token_is_an_error(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"ONCALL_SERVE_TOKENS|auth_tokens") as caught:
        load_config(environ={"ONCALL_SERVE_TOKENS": raw})
    assert not raw.strip(" ,") or raw.strip() not in str(caught.value)


def test_unset_means_no_tokens_and_tokens_are_comma_separated() -> None:
    assert load_config(environ={}).serve.tokens() == []
    config = load_config(environ={"ONCALL_SERVE_TOKENS": f" {GOOD} ,{GOOD[::-1]}"})
    assert config.serve.tokens() == [GOOD, GOOD[::-1]]


def test_an_all_digit_token_is_text_and_never_shown() -> None:
    digits = "1234567890123456789012"
    assert load_config(environ={"ONCALL_SERVE_TOKENS": digits}).serve.auth_tokens == [digits]
    with pytest.raises(ConfigError, match="quote it") as caught:
        load_config(environ={}, overrides={"serve.auth_tokens": [int(digits)]})  # YAML made it a number
    assert digits not in str(caught.value)
    with pytest.raises(ConfigError) as short:
        load_config(environ={"ONCALL_SERVE_TOKENS": "12345"})
    assert "12345" not in str(short.value) and "shorter than 16" in str(short.value)


def test_tokens_are_not_in_reprs() -> None:
    config = load_config(environ={"ONCALL_SERVE_TOKENS": GOOD})
    assert GOOD not in repr(config) and GOOD not in repr(config.serve) and GOOD not in str(config)


def test_token_file_one_per_line(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# rotated 2026-11\n{GOOD}\n\n  {GOOD[::-1]}  \n")
    config = load_config(
        environ={"ONCALL_SERVE_TOKENS": "env-token-0123456789"},
        overrides={"serve.auth_tokens_file": str(token_file)},
    )
    assert config.serve.tokens() == ["env-token-0123456789", GOOD, GOOD[::-1]]
    for content, message in (("\n# none\n", "holds no token"), ("tiny\n", "shorter than 16")):
        token_file.write_text(content)
        with pytest.raises(ConfigError, match=message) as caught:
            config.serve.tokens()
        assert "tiny" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(
            environ={}, overrides={"serve.auth_tokens_file": str(tmp_path / "missing")}
        ).serve.tokens()


def test_a_public_host_needs_tokens_or_an_explicit_opt_out(caplog: pytest.LogCaptureFixture) -> None:
    check_exposure(load_config(environ={}).serve)  # loopback: fine
    public = load_config(environ={}, overrides={"serve.host": "0.0.0.0"}).serve
    with pytest.raises(ConfigError, match="allow_unauthenticated"):
        check_exposure(public)
    check_exposure(
        load_config(environ={"ONCALL_SERVE_TOKENS": GOOD}, overrides={"serve.host": "0.0.0.0"}).serve
    )
    opted_out = load_config(
        environ={}, overrides={"serve.host": "0.0.0.0", "serve.allow_unauthenticated": True}
    )
    with caplog.at_level(logging.WARNING):
        check_exposure(opted_out.serve)
    assert "AUTH IS OFF" in caplog.text

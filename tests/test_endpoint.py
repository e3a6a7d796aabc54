"""Addressing and authentication: server URLs, action URLs, keys, settings."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from wsbridge.endpoint import AccessKey, AuthMode, Endpoint, normalize_server
from wsbridge.errors import ConfigError, UsageError
from wsbridge.settings import ConnectionSettings

SECRET = "s3cret-key-value"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("devpod.example.com", "wss://devpod.example.com"),
        ("devpod.example.com:8443", "wss://devpod.example.com:8443"),
        ("https://devpod.example.com/", "wss://devpod.example.com"),
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080"),
        ("ws://127.0.0.1:17022", "ws://127.0.0.1:17022"),
        ("wss://h.example/prefix", "wss://h.example/prefix"),
        ("HTTPS://Host.Example", "wss://Host.Example"),
    ],
)
def test_server_addresses_normalise_to_websocket_urls(
    given: str, expected: str
) -> None:
    """Bare hosts mean wss://, http(s) map to ws(s), ws(s) stay."""
    assert normalize_server(given) == expected


@pytest.mark.parametrize(
    "given", ["", "ftp://host", "https://", "host:notaport", "https://u:p@host"]
)
def test_bad_server_addresses_are_usage_errors(given: str) -> None:
    """Unusable server settings fail with a usage error."""
    with pytest.raises(UsageError):
        normalize_server(given)


def test_action_url_follows_the_platform_layout() -> None:
    """Project, workspace, action and options land where PROTOCOL.md says."""
    endpoint = Endpoint("wss://h.example:8443", AccessKey(SECRET), project="p1")
    url = endpoint.action_url(
        "my ws", "up", {"id": "my ws"}, {"webMode": "true", "debug": "false"}
    )
    parts = urlsplit(url)
    assert parts.path == (
        "/kubernetes/management/apis/management.loft.sh/v1/namespaces/loft-p-p1"
        "/devpodworkspaceinstances/my%20ws/up"
    )
    query = parse_qs(parts.query)
    assert json.loads(query["options"][0]) == {"id": "my ws"}
    assert query["webMode"] == ["true"]
    assert SECRET not in url


def test_key_travels_in_header_or_cookie() -> None:
    """Header mode sends a bearer token, cookie mode the loft cookie."""
    header = Endpoint("ws://h", AccessKey(SECRET))
    cookie = Endpoint("ws://h", AccessKey(SECRET), auth=AuthMode.COOKIE)
    assert header.auth_headers() == [("Authorization", f"Bearer {SECRET}")]
    assert cookie.auth_headers() == [("Cookie", f"loft_access_key={SECRET}")]


def test_access_key_is_masked_in_repr_and_str() -> None:
    """Printing a key or an endpoint never shows the secret."""
    key = AccessKey(SECRET)
    endpoint = Endpoint("ws://h", key)
    for text in (repr(key), str(key), repr(endpoint), f"{endpoint}"):
        assert SECRET not in text


@pytest.mark.parametrize("bad", ["", "a b", "a\nb", "a;b"])
def test_access_keys_that_could_break_headers_are_refused(bad: str) -> None:
    """Empty keys and keys with separators or control characters fail."""
    with pytest.raises(ConfigError):
        AccessKey(bad)


def test_flags_override_environment(tmp_path: Path) -> None:
    """A key file and --server win over the environment."""
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    key_file.chmod(0o600)
    environ = {
        "WSBRIDGE_SERVER": "env.example",
        "WSBRIDGE_ACCESS_KEY": "from-env",
        "WSBRIDGE_PROJECT": "envproject",
    }
    endpoint = ConnectionSettings(
        server="flag.example", access_key_file=key_file
    ).resolve(environ)
    assert endpoint.server == "wss://flag.example"
    assert endpoint.access_key.reveal() == SECRET
    assert endpoint.project == "envproject"


def test_missing_key_for_a_configured_server_is_a_config_error() -> None:
    """A server without any key source fails with a message naming the fix."""
    with pytest.raises(ConfigError, match="WSBRIDGE_ACCESS_KEY"):
        ConnectionSettings(server="h.example").resolve({})


def test_missing_key_file_is_reported(tmp_path: Path) -> None:
    """A key file that does not exist is named in the error."""
    with pytest.raises(ConfigError, match="does not exist"):
        ConnectionSettings(
            server="h.example", access_key_file=tmp_path / "nope"
        ).resolve({})

"""Saved profiles: storage, permissions, and how they combine with flags."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from wsbridge.endpoint import AccessKey, AuthMode
from wsbridge.errors import ConfigError
from wsbridge.profiles import Profile, ProfileStore
from wsbridge.settings import ConnectionSettings

KEY = "profile-secret-key"


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    """A profile store in a fresh directory."""
    return ProfileStore(tmp_path / "config" / "profiles.toml")


def saved(store: ProfileStore, name: str = "default", **fields: str) -> Profile:
    """Save a profile with sensible defaults and return it."""
    profile = Profile(
        name=name,
        server=fields.get("server", "wss://work.example"),
        access_key=AccessKey(fields.get("key", KEY)),
        project=fields.get("project", "team"),
        auth=AuthMode(fields.get("auth", "cookie")),
    )
    store.save(profile)
    return profile


def test_profile_file_is_readable_by_its_owner_alone(store: ProfileStore) -> None:
    """The file is 0600 and its directory 0700."""
    saved(store)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700


def test_profiles_round_trip_and_remove(store: ProfileStore) -> None:
    """A saved profile loads back equal; logout removes only it."""
    first = saved(store, "default")
    second = saved(store, "other", server="wss://other.example")
    assert store.load() == {"default": first, "other": second}
    assert store.remove("default")
    assert not store.remove("default")
    assert list(store.load()) == ["other"]


def test_default_profile_supplies_server_project_auth_and_key(
    store: ProfileStore,
) -> None:
    """With nothing else set, the default profile is used whole."""
    saved(store)
    endpoint = ConnectionSettings(profiles=store).resolve({})
    assert endpoint.server == "wss://work.example"
    assert endpoint.project == "team"
    assert endpoint.auth is AuthMode.COOKIE
    assert endpoint.access_key.reveal() == KEY


def test_environment_overrides_profile_and_flags_override_both(
    store: ProfileStore,
) -> None:
    """Env beats the profile; a flag beats env."""
    saved(store)
    environ = {"WSBRIDGE_PROJECT": "from-env"}
    assert ConnectionSettings(profiles=store).resolve(environ).project == "from-env"
    flagged = ConnectionSettings(profiles=store, project="from-flag")
    assert flagged.resolve(environ).project == "from-flag"


def test_profile_key_is_never_sent_to_another_server(store: ProfileStore) -> None:
    """Pointing --server elsewhere does not reuse the profile's key."""
    saved(store)
    with pytest.raises(ConfigError, match="no access key"):
        ConnectionSettings(profiles=store, server="evil.example").resolve({})


def test_profile_selected_by_flag_or_environment(store: ProfileStore) -> None:
    """--profile and WSBRIDGE_PROFILE pick a named profile."""
    saved(store)
    saved(store, "other", server="wss://other.example", key="other-key")
    by_env = ConnectionSettings(profiles=store).resolve({"WSBRIDGE_PROFILE": "other"})
    assert by_env.server == "wss://other.example"
    by_flag = ConnectionSettings(profiles=store, profile="other").resolve({})
    assert by_flag.access_key.reveal() == "other-key"


def test_unknown_profile_is_a_config_error(store: ProfileStore) -> None:
    """Naming a profile that does not exist says how to create it."""
    with pytest.raises(ConfigError, match="wsbridge login"):
        ConnectionSettings(profiles=store, profile="nope").resolve({})


def test_broken_profile_file_is_reported(store: ProfileStore) -> None:
    """A corrupt file gives a one-line error naming the file."""
    store.path.parent.mkdir(parents=True)
    store.path.write_text("[profiles.x\n")
    with pytest.raises(ConfigError, match=str(store.path)):
        store.load()

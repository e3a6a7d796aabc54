"""``wsbridge login`` and ``logout``: check a key, then save or forget it."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from .api import list_workspaces
from .endpoint import AccessKey, AuthMode, read_access_key_file
from .errors import ConfigError, UsageError
from .profiles import Profile
from .settings import ENV_ACCESS_KEY, ConnectionSettings

__all__ = ["login", "read_key_for_login"]


def read_key_for_login(key_file: Path | None) -> AccessKey:
    """Get the key to log in with: a file, ``-`` for stdin, env, or a prompt.

    The prompt is hidden and only offered on a terminal; without one,
    nothing interactive is asked and the error says what to use instead.
    """
    if key_file is not None and str(key_file) == "-":
        return AccessKey(sys.stdin.readline().strip())
    if key_file is not None:
        return read_access_key_file(key_file)
    from_env = os.environ.get(ENV_ACCESS_KEY)
    if from_env:
        return AccessKey(from_env.strip())
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise ConfigError(
            "no terminal to ask for the access key: use --access-key-file FILE "
            f"(or - for stdin) or set {ENV_ACCESS_KEY}"
        )
    from prompt_toolkit import PromptSession
    from prompt_toolkit.output import create_output

    # The prompt draws on stderr, so stdout stays clean for scripts.
    session: PromptSession[str] = PromptSession(output=create_output(sys.stderr))
    try:
        text = session.prompt("Access key: ", is_password=True)
    except EOFError:
        raise ConfigError("no access key entered") from None
    return AccessKey(text.strip())


async def login(settings: ConnectionSettings, profile_name: str, key: AccessKey) -> str:
    """Check ``key`` against the server, then save it as a profile.

    Returns a one-line summary for the user. Raises AuthRejected (and the
    other connection errors) when the server does not accept the key; then
    nothing is saved.
    """
    if not settings.server:
        raise UsageError("login needs --server URL")
    # The key under test is the one given here, never a saved or env one.
    check = replace(settings, access_key_file=None, profile=None)
    endpoint = check.resolve({ENV_ACCESS_KEY: key.reveal()})
    workspaces = await list_workspaces(endpoint)
    settings.profiles.save(
        Profile(
            name=profile_name,
            server=endpoint.server,
            access_key=key,
            project=settings.project,
            auth=settings.auth or AuthMode.HEADER,
        )
    )
    return (
        f"logged in to {endpoint.display_host} as profile {profile_name!r} "
        f"({len(workspaces)} workspace{'s' if len(workspaces) != 1 else ''} "
        f"in project {endpoint.project!r}); saved in {settings.profiles.path}"
    )

"""A user's own ssh config, as the config-ssh tests expect to find it."""

from __future__ import annotations


def user_config(include: str) -> str:
    """Return a config with all that must survive byte for byte.

    Comments, an ``Include`` (of an absolute path, so ssh never looks in
    the real ~/.ssh), a Match block, tab indentation, and no newline after
    the last line.
    """
    return (
        "# my own hosts\n"
        f"Include {include}\n"
        "\n"
        "Host build\n"
        "\tHostName 127.0.0.1\n"
        "    Port 2222  # trailing comment\n"
        "\n"
        "Match host *.internal\n"
        "    User deploy\n"
        "# the end, without a newline"
    )

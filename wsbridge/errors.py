"""Exceptions raised by wsbridge.

Every failure a user can act on has its own class; all share one root, and
each carries the process exit code the CLI uses for it (ssh's convention:
255 for connection, authentication and protocol failures, 2 for usage)::

    WsbridgeError
     ├── UsageError                  bad arguments or configuration      (2)
     ├── ConfigError                 unreadable key file, profile, ...   (2)
     └── ConnectionFailed            could not open the websocket      (255)
          ├── TLSFailed              certificate or TLS handshake problem
          ├── AuthRejected           401 or 403: the access key was refused
          ├── WorkspaceNotFound      404 for the workspace or the action
          ├── HandshakeRejected      any other HTTP answer to the upgrade
          ├── ConnectionLost         the session ended without an exit code
          ├── ProtocolViolation      the peer broke the framing contract
          ├── LocalStreamClosed      our own stdout or socket went away
          ├── HostKeyRejected        the workspace's SSH host key is unknown
          │                          (with --strict) or has changed
          └── SSHAuthFailed          the workspace's SSH server refused us

Library errors (websockets, asyncssh, OSError) are translated into these at
the boundary with ``raise ... from exc``, so no traceback reaches a user for
an expected failure.
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_CONNECTION = 255
EXIT_INTERRUPTED = 130


class WsbridgeError(Exception):
    """The root of every error wsbridge raises on purpose."""

    exit_code = EXIT_CONNECTION


class UsageError(WsbridgeError):
    """The command line or the environment asks for something impossible."""

    exit_code = EXIT_USAGE


class ConfigError(WsbridgeError):
    """A file wsbridge was told to read is missing, unreadable or invalid."""

    exit_code = EXIT_USAGE


class ConnectionFailed(WsbridgeError):
    """The websocket to the platform could not be opened or kept."""


class TLSFailed(ConnectionFailed):
    """The TLS handshake failed, usually over the server's certificate."""


class AuthRejected(ConnectionFailed):
    """The server refused the access key (HTTP 401 or 403)."""


class WorkspaceNotFound(ConnectionFailed):
    """The server answered 404: no such workspace, project or action."""


class HandshakeRejected(ConnectionFailed):
    """The server answered the websocket upgrade with another HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ConnectionLost(ConnectionFailed):
    """The websocket ended before the command sent its exit code."""


class ProtocolViolation(ConnectionFailed):
    """The peer sent something the framing contract does not allow."""


class LocalStreamClosed(ConnectionFailed):
    """The local reader of the output (a pipe, a socket) went away."""


class HostKeyRejected(ConnectionFailed):
    """The workspace's SSH host key changed, or is unknown under --strict."""


class SSHAuthFailed(ConnectionFailed):
    """The workspace's SSH server accepted none of our keys."""

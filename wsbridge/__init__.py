"""wsbridge: reach DevPod.Pro workspaces over their command websockets."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsbridge")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]

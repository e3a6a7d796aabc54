"""The managed ssh config block: building, splicing, removing, writing.

Whatever OpenSSH makes of a block is asked of OpenSSH itself (``ssh -G``
with ``-F`` naming a temporary file), never of the user's own config.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from wsbridge.errors import ConfigError, UsageError
from wsbridge.paths import EMULATOR_URL, emulator_state_dir
from wsbridge.settings import ConnectionSettings
from wsbridge.sshconfig import (
    BEGIN_MARKER,
    END_MARKER,
    BlockSettings,
    apply,
    build_block,
    configure,
    find_shadowing,
    proxy_arguments,
    remove_block,
    resolved_options,
    sample_host,
    splice_block,
)

from .ssh_samples import user_config

# A user's config with what must survive untouched (see ssh_samples).
USER_CONFIG = user_config("/nonexistent/wsbridge-test/*.conf")


def make_block(
    tmp_path: Path,
    *,
    command: tuple[str, ...] = ("/opt/wsbridge/bin/wsbridge",),
    extra_options: tuple[tuple[str, str], ...] = (),
    workspaces: tuple[str, ...] | None = None,
    user: str = "dev",
) -> str:
    """Build a block with fixed settings, its known_hosts under ``tmp_path``."""
    return build_block(
        BlockSettings(
            known_hosts_file=tmp_path / "state" / "ssh_known_hosts",
            command=command,
            proxy_arguments=("--server", "wss://example.test"),
            user=user,
            extra_options=extra_options,
            workspaces=workspaces,
        )
    )


def ssh_view(tmp_path: Path, text: str, host: str) -> dict[str, str]:
    """Return the options OpenSSH resolves for ``host`` from config ``text``."""
    config = tmp_path / "view.config"
    config.write_text(text)
    return resolved_options(config, host)


# --- build_block ------------------------------------------------------------


def test_block_is_one_wildcard_entry_between_the_markers(tmp_path: Path) -> None:
    """The default block is one ``Host *.devpod`` entry inside the markers."""
    block = make_block(tmp_path)

    lines = block.splitlines()
    assert lines[0] == BEGIN_MARKER
    assert lines[-1] == END_MARKER
    assert block.endswith("\n")
    assert [line for line in lines if line.startswith("Host ")] == ["Host *.devpod"]


def test_openssh_reads_the_block_as_intended(tmp_path: Path) -> None:
    """ssh -G sees the proxy with %n, the user, keep-alives and accept-new."""
    block = make_block(tmp_path)

    options = ssh_view(tmp_path, block, "demo.devpod")

    assert options["proxycommand"] == (
        "/opt/wsbridge/bin/wsbridge proxy --server wss://example.test "
        "--host-suffix devpod %n"
    )
    assert options["user"] == "dev"
    assert options["stricthostkeychecking"] == "accept-new"
    assert options["userknownhostsfile"] == str(tmp_path / "state/ssh_known_hosts")
    assert options["serveraliveinterval"] == "30"
    assert options["connecttimeout"] == "300"


def test_block_neither_forwards_the_agent_nor_pins_host_key_algorithms(
    tmp_path: Path,
) -> None:
    """ForwardAgent and HostKeyAlgorithms are left to the user's own config."""
    block = make_block(tmp_path)

    assert "forwardagent" not in block.lower()
    assert "hostkeyalgorithms" not in block.lower()
    assert "stricthostkeychecking no" not in block.lower()


def test_executable_path_with_space_and_percent_is_quoted(tmp_path: Path) -> None:
    """A path with a space and a % reaches the shell as one intact word."""
    command = ("/opt/my tools/50%/wsbridge",)
    block = make_block(tmp_path, command=command)

    options = ssh_view(tmp_path, block, "demo.devpod")

    # ssh -G shows the command before %-expansion: %% stays doubled there.
    assert options["proxycommand"].startswith("'/opt/my tools/50%%/wsbridge' proxy ")


def test_known_hosts_path_with_space_is_read_as_one_path(tmp_path: Path) -> None:
    """A known_hosts file under a directory with a space stays one path."""
    block = build_block(
        BlockSettings(known_hosts_file=tmp_path / "a b" / "hosts", command=("w",))
    )

    options = ssh_view(tmp_path, block, "demo.devpod")

    assert options["userknownhostsfile"] == str(tmp_path / "a b" / "hosts")


def test_user_options_win_over_the_defaults(tmp_path: Path) -> None:
    """An --ssh-option that names a default option replaces it in effect."""
    extra = (("ConnectTimeout", "10"), ("user", "root"), ("Compression", "yes"))
    block = make_block(tmp_path, extra_options=extra)

    options = ssh_view(tmp_path, block, "demo.devpod")

    assert options["connecttimeout"] == "10"
    assert options["user"] == "root"
    assert options["compression"] == "yes"
    assert block.count("ConnectTimeout") == 1


@pytest.mark.parametrize(
    "option",
    [("Bad Name", "x"), ("ProxyCommand", "a\nHost *"), ("", "x"), ("1st", "x")],
)
def test_malformed_user_option_is_refused(
    tmp_path: Path, option: tuple[str, str]
) -> None:
    """An option name that is not a word, or a value with a newline, is refused."""
    with pytest.raises(UsageError, match="invalid ssh option"):
        make_block(tmp_path, extra_options=(option,))


@pytest.mark.parametrize("suffix", ["", "dev pod", "*", "a\nb", ".devpod"])
def test_malformed_host_suffix_is_refused(tmp_path: Path, suffix: str) -> None:
    """A suffix that could change the Host pattern's meaning is refused."""
    with pytest.raises(UsageError, match="invalid host suffix"):
        build_block(
            BlockSettings(
                known_hosts_file=tmp_path / "kh", command=("w",), host_suffix=suffix
            )
        )


def test_per_workspace_block_has_one_entry_each_in_name_order(
    tmp_path: Path,
) -> None:
    """With a workspace list, each gets its own entry naming it, sorted."""
    block = make_block(tmp_path, workspaces=("zeta", "alpha"))

    hosts = [line for line in block.splitlines() if line.startswith("Host ")]
    assert hosts == ["Host alpha.devpod", "Host zeta.devpod"]
    zeta = ssh_view(tmp_path, block, "zeta.devpod")
    assert zeta["proxycommand"].endswith(" proxy --server wss://example.test zeta")
    assert "proxycommand" not in ssh_view(tmp_path, block, "other.devpod")


def test_workspace_name_with_config_syntax_is_refused(tmp_path: Path) -> None:
    """A listed name that could inject config lines is refused, not written."""
    with pytest.raises(UsageError, match="invalid workspace name"):
        make_block(tmp_path, workspaces=("ok", "evil\nProxyCommand x"))


def test_sample_host_is_one_the_first_entry_serves(tmp_path: Path) -> None:
    """The sample host matches the wildcard, or is the first explicit host."""
    assert sample_host(make_block(tmp_path)) == "workspace.devpod"
    assert sample_host(make_block(tmp_path, workspaces=("b", "a"))) == "a.devpod"
    assert sample_host("no hosts here\n") is None


# --- splice_block and remove_block -------------------------------------------


@pytest.mark.parametrize(
    "original",
    [
        "",
        "\n",
        USER_CONFIG,
        USER_CONFIG + "\n",
        USER_CONFIG + "\n\n",
        "Host a\r\n    Port 1\r\n",
        "Host a\r\n    Port 1",
    ],
    ids=[
        "empty",
        "newline",
        "no-final-newline",
        "final-newline",
        "final-blank-line",
        "crlf",
        "crlf-no-final-newline",
    ],
)
def test_removing_an_appended_block_gives_back_the_original(
    tmp_path: Path, original: str
) -> None:
    """splice then remove returns the text exactly, whatever its ending."""
    spliced = splice_block(original, make_block(tmp_path))

    assert spliced.startswith(original)
    assert remove_block(spliced) == original


def test_appended_block_is_set_apart_by_a_blank_line(tmp_path: Path) -> None:
    """After a file ending in a newline, one blank line precedes the block."""
    block = make_block(tmp_path)

    assert splice_block("Host a\n", block) == "Host a\n\n" + block
    assert splice_block("Host a", block) == "Host a\n" + block


def test_refreshed_block_replaces_the_old_one_in_place(tmp_path: Path) -> None:
    """A new block takes the old one's place; text around it is untouched."""
    before = "# top\nHost first\n    Port 1\n\n"
    after = "\nMatch all\n    ServerAliveCountMax 9\n"
    old = make_block(tmp_path)
    new = make_block(tmp_path, extra_options=(("Compression", "yes"),))

    refreshed = splice_block(before + old + after, new)

    assert refreshed == before + new + after
    assert remove_block(refreshed) == before[:-1] + after


def test_block_with_crlf_markers_is_still_found(tmp_path: Path) -> None:
    """Markers turned CRLF by an editor are recognised, not duplicated."""
    old = make_block(tmp_path).replace("\n", "\r\n")
    new = make_block(tmp_path, user="other")

    refreshed = splice_block("Host a\r\n\r\n" + old + "Host b\r\n", new)

    assert refreshed == "Host a\r\n\r\n" + new + "Host b\r\n"


@pytest.mark.parametrize(
    "damaged",
    [
        f"Host a\n{BEGIN_MARKER}\nHost *.devpod\n",
        f"Host a\n{END_MARKER}\n",
        f"{END_MARKER}\n{BEGIN_MARKER}\n",
        f"{BEGIN_MARKER}\n{END_MARKER}\n{BEGIN_MARKER}\n{END_MARKER}\n",
    ],
    ids=["begin-only", "end-only", "end-before-begin", "two-blocks"],
)
def test_damaged_markers_are_refused_rather_than_guessed(
    tmp_path: Path, damaged: str
) -> None:
    """Neither splicing nor removing touches a file whose markers are damaged."""
    with pytest.raises(ConfigError, match="damaged"):
        splice_block(damaged, make_block(tmp_path))
    with pytest.raises(ConfigError, match="damaged"):
        remove_block(damaged)


def test_marker_text_inside_a_line_is_not_a_marker(tmp_path: Path) -> None:
    """A marker quoted in a comment, not on a line of its own, is ignored."""
    text = f"# see {BEGIN_MARKER}\n"

    assert splice_block(text, "B\n") == text + "\nB\n"
    assert remove_block(text) == text


# --- apply ------------------------------------------------------------------


def test_new_config_file_is_private(tmp_path: Path) -> None:
    """A config file that did not exist is created 0600 in a 0700 directory."""
    config = tmp_path / "ssh" / "config"

    change = apply(config, make_block(tmp_path))

    assert change.changed and change.backup is None
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert config.read_text() == make_block(tmp_path)


def test_existing_file_keeps_its_mode_and_gets_a_backup(tmp_path: Path) -> None:
    """A 0644 file stays 0644; the backup holds the previous bytes."""
    config = tmp_path / "config"
    config.write_text(USER_CONFIG)
    config.chmod(0o644)

    change = apply(config, make_block(tmp_path))

    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    assert change.backup == tmp_path / "config.wsbridge.bak"
    assert change.backup.read_text() == USER_CONFIG
    assert config.read_text() == USER_CONFIG + "\n" + make_block(tmp_path)


def test_unchanged_block_leaves_the_file_alone(tmp_path: Path) -> None:
    """Applying the same block again writes nothing: same bytes, same mtime."""
    config = tmp_path / "config"
    config.write_text(USER_CONFIG)
    apply(config, make_block(tmp_path))
    os.utime(config, ns=(1_000_000_000, 1_000_000_000))
    written = config.read_bytes()

    change = apply(config, make_block(tmp_path))

    assert not change.changed and change.diff == ""
    assert config.read_bytes() == written
    assert config.stat().st_mtime_ns == 1_000_000_000
    assert (tmp_path / "config.wsbridge.bak").read_text() == USER_CONFIG


def test_dry_run_returns_the_diff_and_writes_nothing(tmp_path: Path) -> None:
    """A dry run reports a unified diff and leaves no file behind."""
    (tmp_path / "ssh").mkdir()
    config = tmp_path / "ssh" / "config"
    config.write_text(USER_CONFIG)
    before = config.stat().st_mtime_ns

    change = apply(config, make_block(tmp_path), dry_run=True)

    assert change.changed
    assert f"+{BEGIN_MARKER}\n" in change.diff
    assert "+Host *.devpod\n" in change.diff
    assert config.read_text() == USER_CONFIG
    assert config.stat().st_mtime_ns == before
    assert sorted(path.name for path in config.parent.iterdir()) == ["config"]


def test_crlf_lines_outside_the_block_survive_a_write(tmp_path: Path) -> None:
    """Line ends outside the block are written back exactly, CRLF included."""
    config = tmp_path / "config"
    original = b"Host a\r\n    Port 1\r\n"
    config.write_bytes(original)

    apply(config, make_block(tmp_path))
    assert config.read_bytes().startswith(original + b"\n" + BEGIN_MARKER.encode())
    apply(config, None)

    assert config.read_bytes() == original


def test_symlinked_config_is_written_through_the_link(tmp_path: Path) -> None:
    """A config that is a symlink stays a link; its target gets the block."""
    target = tmp_path / "dotfiles" / "ssh_config"
    target.parent.mkdir()
    target.write_text(USER_CONFIG)
    link = tmp_path / "config"
    link.symlink_to(target)

    apply(link, make_block(tmp_path))

    assert link.is_symlink()
    assert BEGIN_MARKER in target.read_text()


def test_damaged_file_is_not_written(tmp_path: Path) -> None:
    """apply raises on damaged markers and leaves no backup or new file."""
    (tmp_path / "ssh").mkdir()
    config = tmp_path / "ssh" / "config"
    config.write_text(f"Host a\n{BEGIN_MARKER}\n")

    with pytest.raises(ConfigError):
        apply(config, make_block(tmp_path))

    assert config.read_text() == f"Host a\n{BEGIN_MARKER}\n"
    assert sorted(path.name for path in config.parent.iterdir()) == ["config"]


# --- find_shadowing ----------------------------------------------------------


def test_earlier_host_star_with_proxycommand_is_reported(tmp_path: Path) -> None:
    """A ``Host *`` ProxyCommand before the block is named as shadowing it."""
    config = tmp_path / "config"
    block = make_block(tmp_path)
    config.write_text("Host *\n    ProxyCommand nc %h %p\n\n" + block)

    shadow = find_shadowing(config, block, "demo.devpod")

    assert shadow is not None
    assert "nc %h %p" in shadow and "shadowed" in shadow


def test_later_host_star_does_not_shadow(tmp_path: Path) -> None:
    """The same ``Host *`` after the block loses to it: nothing is reported."""
    config = tmp_path / "config"
    block = make_block(tmp_path)
    config.write_text(block + "\nHost *\n    ProxyCommand nc %h %p\n")

    assert find_shadowing(config, block, "demo.devpod") is None


def test_earlier_proxyjump_counts_as_shadowing(tmp_path: Path) -> None:
    """A ProxyJump read first also keeps ssh from using the block's proxy."""
    config = tmp_path / "config"
    block = make_block(tmp_path)
    config.write_text("Host *.devpod\n    ProxyJump bastion\n\n" + block)

    assert find_shadowing(config, block, "demo.devpod") is not None


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    """A config OpenSSH cannot parse gives a ConfigError with its reason."""
    config = tmp_path / "config"
    config.write_text("NoSuchKeyword yes\n")

    with pytest.raises(ConfigError, match="ssh -G could not read"):
        find_shadowing(config, make_block(tmp_path), "demo.devpod")


# --- proxy_arguments ---------------------------------------------------------


def test_flags_and_environment_are_written_out_as_flags(tmp_path: Path) -> None:
    """Server and project from the environment, key file made absolute."""
    settings = ConnectionSettings(access_key_file=Path("relative/key"), insecure=True)
    environ = {"WSBRIDGE_SERVER": "wss://env.test", "WSBRIDGE_PROJECT": "p1"}

    arguments = proxy_arguments(settings, environ)

    assert arguments == [
        "--server",
        "wss://env.test",
        "--project",
        "p1",
        "--access-key-file",
        str(Path("relative/key").absolute()),
        "--insecure",
    ]


def test_access_key_from_the_environment_is_never_written(tmp_path: Path) -> None:
    """A key given as WSBRIDGE_ACCESS_KEY does not end up in the block."""
    environ = {"WSBRIDGE_SERVER": "wss://env.test", "WSBRIDGE_ACCESS_KEY": "s3cret"}

    arguments = proxy_arguments(ConnectionSettings(), environ)

    assert "s3cret" not in " ".join(arguments)


# --- configure ------------------------------------------------------------------


@pytest.mark.parametrize("server", [EMULATOR_URL, "ws://127.0.0.1:9"])
async def test_only_the_default_emulator_gets_its_client_key(
    tmp_path: Path, server: str
) -> None:
    """The local emulator's own key is offered for its default URL alone."""
    client_key = emulator_state_dir() / "client_key"
    client_key.parent.mkdir(parents=True)
    client_key.write_text("not read here\n")
    access_key = tmp_path / "access-key"
    access_key.write_text("k\n")
    config = tmp_path / "config"
    settings = ConnectionSettings(server=server, access_key_file=access_key)

    await configure(settings, config, extra_options=[("Compression", "yes")])

    options = resolved_options(config, "demo.devpod")
    if server == EMULATOR_URL:
        assert options["identityfile"] == str(client_key)
    else:
        assert str(client_key) not in config.read_text()
    assert options["compression"] == "yes"

"""Measure what wsbridge costs next to OpenSSH talking straight to sshd.

    python scripts/bench.py [--size-mib 64] [--reps 5] [--echoes 200]

Starts its own sshd (key-only, loopback, free port) and ``wsbridge emulator
--ssh-upstream`` spliced to it, then runs the same OpenSSH client two ways:
(a) straight to sshd, (b) through ``wsbridge proxy`` and the emulator. Both
use one cipher and no compression, so the difference is wsbridge's.

It prints medians over the repetitions: download and upload throughput, the
round trip of a one-byte echo through an interactive ``ssh host cat``, the CPU
seconds per GiB that the proxy and the emulator spend (net of a connect-only
run, so Python start-up and handshakes do not count), and the proxy's peak
memory. Last, the memory of ``wsbridge listen`` holding 100 idle connections.

To add a measurement, write a function that takes a ``Bench`` and returns
``Result`` rows, and append it to ``MEASUREMENTS``; ``process_memory_kib``
and ``cpu_seconds`` read a running process's memory and CPU time, and
``tests.procs.ServerProcess`` starts a server and waits for its ready line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

REPO = Path(__file__).resolve().parent.parent
# The test suite's helpers start sshd and the emulator; reuse them as they are.
sys.path.insert(0, str(REPO))

from tests.emulator import Emulator, start_emulator  # noqa: E402
from tests.openssh import OpenSSH, proxy_argv, write_known_hosts  # noqa: E402
from tests.procs import START_TIMEOUT, ServerProcess  # noqa: E402
from tests.sshd import Sshd, generate_key, public_key_line, start_sshd  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB
MB = 1_000_000

# The same cipher and no compression on both routes: a fair comparison, and
# AES-GCM is what a modern client negotiates on hardware with AES-NI.
FAIR_SSH_OPTIONS = ["-T", "-o", "Ciphers=aes128-gcm@openssh.com"]
FAIR_SSH_OPTIONS += ["-o", "Compression=no"]

# Reads and writes on the client side, large enough to keep ssh busy.
CHUNK = 256 * 1024

# A transfer or echo session that takes longer than this is stuck; the
# watchdog kills ssh so that the bench fails instead of hanging.
SESSION_TIMEOUT = 300.0

# Marks the remote shell prints around an upload so that the clock measures
# the bytes moving, not the login.
UPLOAD_READY = b"R"
UPLOAD_DONE = b"D"

# Internal mode: run the proxy as a child and report its resource usage.
RECORD_RUSAGE = "--record-rusage"

# How long a shim's usage report may take to arrive after ssh exits.
INBOX_TIMEOUT = 30.0

# Idle TCP connections held through one ``wsbridge listen`` to weigh it.
IDLE_CONNECTIONS = 100

# What each idle connection sends before it falls silent: an SSH client's
# identification line, so that the workspace's server answers with its own.
IDLE_CLIENT_BANNER = b"SSH-2.0-wsbridge-bench\r\n"
SSH_BANNER_PREFIX = b"SSH-2.0-"

# How long an idle connection may take to get the server's banner back.
IDLE_CONNECT_TIMEOUT = 60.0

# The line ``wsbridge listen`` prints once it listens.
LISTENING = re.compile(r"wsbridge listening on 127\.0\.0\.1:(\d+) ")

Measure = TypeVar("Measure")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- reading a process's costs ---------------------------------------------


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time a live process has used."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces; the fields after it do not.
    fields = stat.rpartition(")")[2].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / CLOCK_TICKS


def process_memory_kib(pid: int) -> tuple[int, int]:
    """Return a live process's resident and peak resident memory, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def record_rusage(inbox: Path, argv: Sequence[str]) -> int:
    """Run ``argv`` with our stdin and stdout; send its rusage to ``inbox``."""
    child: list[int] = []

    # ssh sends SIGHUP to its ProxyCommand when it exits; pass it on, as the
    # proxy would get it without this shim, and stay to collect the usage.
    def forward_hangup(signum: int, frame: object) -> None:
        if child:
            os.kill(child[0], signal.SIGHUP)

    signal.signal(signal.SIGHUP, forward_hangup)
    child.append(os.posix_spawnp(argv[0], list(argv), os.environ))
    _, status, usage = os.wait4(child[0], 0)

    record = {
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "max_rss_kib": usage.ru_maxrss,
    }
    with socket.socket(socket.AF_UNIX) as sender:
        sender.settimeout(INBOX_TIMEOUT)
        sender.connect(str(inbox))
        sender.sendall(json.dumps(record).encode())
    return os.waitstatus_to_exitcode(status)


class UsageInbox:
    """A Unix socket on which each shim reports its proxy's usage once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen()
        self._listener.settimeout(INBOX_TIMEOUT)

    def receive(self) -> dict[str, Any]:
        """Wait for the next shim's report and return it."""
        connection, _ = self._listener.accept()
        with connection:
            connection.settimeout(INBOX_TIMEOUT)
            report = b""
            while chunk := connection.recv(4096):
                report += chunk
        return cast(dict[str, Any], json.loads(report))

    def close(self) -> None:
        """Stop listening."""
        self._listener.close()


@dataclass(frozen=True)
class Usage:
    """What one wsbridge run cost: proxy CPU and memory, emulator CPU."""

    proxy_cpu: float
    proxy_max_rss_kib: int
    emulator_cpu: float


# --- the two routes ---------------------------------------------------------


@dataclass
class Bench:
    """sshd, the emulator in front of it, and OpenSSH set up for both routes."""

    sshd: Sshd
    emulator: Emulator
    openssh: OpenSSH
    inbox: UsageInbox
    size: int
    reps: int
    echoes: int

    def direct(self, command: str) -> list[str]:
        """Return ssh straight to sshd running ``command``."""
        return self.openssh.ssh(
            "127.0.0.1", command, port=self.sshd.port, extra=FAIR_SSH_OPTIONS
        )

    def bridged(self, command: str) -> list[str]:
        """Return ssh through wsbridge running ``command``, its proxy measured."""
        proxy = proxy_argv(
            self.emulator.url,
            "demo",
            access_key_file=self.emulator.access_key_file,
        )
        shim = [sys.executable, __file__, RECORD_RUSAGE, str(self.inbox.path)]
        shim += ["--", *proxy]
        return self.openssh.ssh("demo", command, proxy=shim, extra=FAIR_SSH_OPTIONS)

    def run_bridged(
        self, command: str, run: Callable[[list[str]], Measure]
    ) -> tuple[Measure, Usage]:
        """Run ``command`` through wsbridge; return the measure and its costs."""
        emulator_before = cpu_seconds(self.emulator.process.pid)
        measure = run(self.bridged(command))
        proxy = self.inbox.receive()
        emulator_cpu = cpu_seconds(self.emulator.process.pid) - emulator_before
        usage = Usage(proxy["cpu_seconds"], proxy["max_rss_kib"], emulator_cpu)
        return measure, usage


# --- sessions ---------------------------------------------------------------


class BenchFailed(RuntimeError):
    """A session did not move the bytes it should have."""


@contextmanager
def session(argv: Sequence[str]) -> Iterator[subprocess.Popen[bytes]]:
    """Start ssh with pipes; kill it if it outlives ``SESSION_TIMEOUT``."""
    ssh = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    watchdog = threading.Timer(SESSION_TIMEOUT, ssh.kill)
    watchdog.start()
    try:
        yield ssh
    finally:
        watchdog.cancel()
        for pipe in (ssh.stdin, ssh.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
        ssh.kill()
        ssh.wait()
        assert ssh.stderr is not None
        ssh.stderr.close()


def read_exactly(fd: int, count: int) -> bytes:
    """Read ``count`` bytes from ``fd``; the watchdog bounds the wait."""
    received = bytearray()
    while len(received) < count:
        chunk = os.read(fd, count - len(received))
        if not chunk:
            raise BenchFailed(f"stream ended after {len(received)} of {count} bytes")
        received += chunk
    return bytes(received)


def finish(ssh: subprocess.Popen[bytes]) -> None:
    """Wait for ssh to exit and fail loudly unless it succeeded."""
    status = ssh.wait(SESSION_TIMEOUT)
    if status != 0:
        assert ssh.stderr is not None
        raise BenchFailed(f"ssh exited {status}: {ssh.stderr.read().decode()}")


def download_seconds(size: int, argv: Sequence[str]) -> float:
    """Time ``size`` bytes from first byte to last coming out of ssh."""
    with session(argv) as ssh:
        assert ssh.stdin is not None and ssh.stdout is not None
        ssh.stdin.close()
        fd = ssh.stdout.fileno()
        received = len(os.read(fd, CHUNK))
        started = time.perf_counter()
        while chunk := os.read(fd, CHUNK):
            received += len(chunk)
        elapsed = time.perf_counter() - started
        finish(ssh)
    if received != size:
        raise BenchFailed(f"downloaded {received} bytes, expected {size}")
    return elapsed


def upload_seconds(size: int, argv: Sequence[str]) -> float:
    """Time ``size`` bytes into ssh until the remote side has read them all."""
    block = bytes(CHUNK)
    with session(argv) as ssh:
        assert ssh.stdin is not None and ssh.stdout is not None
        in_fd, out_fd = ssh.stdin.fileno(), ssh.stdout.fileno()
        read_exactly(out_fd, len(UPLOAD_READY))
        started = time.perf_counter()
        for offset in range(0, size, CHUNK):
            view = memoryview(block)[: min(CHUNK, size - offset)]
            while view:
                view = view[os.write(in_fd, view) :]
        ssh.stdin.close()
        read_exactly(out_fd, len(UPLOAD_DONE))
        elapsed = time.perf_counter() - started
        finish(ssh)
    return elapsed


def echo_round_trips(count: int, argv: Sequence[str]) -> list[float]:
    """Send one byte at a time through a remote ``cat``; return each round trip."""
    with session(argv) as ssh:
        assert ssh.stdin is not None and ssh.stdout is not None
        in_fd, out_fd = ssh.stdin.fileno(), ssh.stdout.fileno()
        # The first echo also waits for the login; it is not a round trip.
        os.write(in_fd, b"x")
        read_exactly(out_fd, 1)
        trips = []
        for _ in range(count):
            started = time.perf_counter()
            os.write(in_fd, b"x")
            read_exactly(out_fd, 1)
            trips.append(time.perf_counter() - started)
        ssh.stdin.close()
        finish(ssh)
    return trips


def connect_only(argv: Sequence[str]) -> None:
    """Log in, run ``true`` and leave; the cost every session pays."""
    with session(argv) as ssh:
        assert ssh.stdin is not None
        ssh.stdin.close()
        finish(ssh)


# --- measurements -----------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One row: a measure for both routes, or a wsbridge-only cost."""

    label: str
    unit: str
    bridged: float
    direct: float | None = None


def measure_throughput(bench: Bench) -> list[Result]:
    """Measure download and upload throughput, and what wsbridge spends on them."""
    size = bench.size
    download = f"head -c {size} /dev/zero"
    upload = "printf R; cat > /dev/null; printf D"
    transfers: dict[str, tuple[str, Callable[[int, Sequence[str]], float]]] = {
        "download": (download, download_seconds),
        "upload": (upload, upload_seconds),
    }

    direct: dict[str, list[float]] = {name: [] for name in transfers}
    bridged: dict[str, list[float]] = {name: [] for name in transfers}
    usages: dict[str, list[Usage]] = {name: [] for name in [*transfers, "connect"]}
    for _ in range(bench.reps):
        # Interleave the routes so that drift in machine load hits both alike.
        for name, (command, timed) in transfers.items():
            direct[name].append(timed(size, bench.direct(command)))
            seconds, usage = bench.run_bridged(command, partial(timed, size))
            bridged[name].append(seconds)
            usages[name].append(usage)
        usages["connect"].append(bench.run_bridged("true", connect_only)[1])

    baseline_proxy = statistics.median(u.proxy_cpu for u in usages["connect"])
    baseline_emulator = statistics.median(u.emulator_cpu for u in usages["connect"])
    gib = size / GIB
    results = []
    for name in transfers:
        results.append(
            Result(
                f"{name} throughput",
                "MB/s",
                size / MB / statistics.median(bridged[name]),
                size / MB / statistics.median(direct[name]),
            )
        )
    for name in transfers:
        proxy_cpu = statistics.median(u.proxy_cpu for u in usages[name])
        emulator_cpu = statistics.median(u.emulator_cpu for u in usages[name])
        results.append(
            Result(f"proxy CPU, {name}", "s/GiB", (proxy_cpu - baseline_proxy) / gib)
        )
        results.append(
            Result(
                f"emulator CPU, {name}",
                "s/GiB",
                (emulator_cpu - baseline_emulator) / gib,
            )
        )
    peak_kib = max(u.proxy_max_rss_kib for runs in usages.values() for u in runs)
    results.append(Result("proxy peak memory (max RSS)", "MiB", peak_kib / 1024))
    return results


def measure_echo_round_trip(bench: Bench) -> list[Result]:
    """Measure the round trip of one byte through an interactive session."""
    direct: list[float] = []
    bridged: list[float] = []
    for _ in range(bench.reps):
        direct += echo_round_trips(bench.echoes, bench.direct("cat"))
        trips, _ = bench.run_bridged("cat", partial(echo_round_trips, bench.echoes))
        bridged += trips
    return [
        Result(
            "echo round trip",
            "ms",
            statistics.median(bridged) * 1000,
            statistics.median(direct) * 1000,
        )
    ]


def open_idle_connection(port: int) -> socket.socket:
    """Connect to the listener and send an SSH banner; then stay silent."""
    connection = socket.create_connection(
        ("127.0.0.1", port), timeout=IDLE_CONNECT_TIMEOUT
    )
    connection.sendall(IDLE_CLIENT_BANNER)
    return connection


def await_server_banner(connection: socket.socket) -> None:
    """Wait until the workspace's SSH banner arrives: the session is up."""
    received = b""
    while not received.startswith(SSH_BANNER_PREFIX):
        chunk = connection.recv(len(SSH_BANNER_PREFIX) - len(received))
        if not chunk:
            raise BenchFailed("the listener closed an idle connection")
        received += chunk


def measure_listen_idle_memory(bench: Bench) -> list[Result]:
    """Measure the memory ``wsbridge listen`` spends on idle connections.

    Banner-only clients would be cut off by sshd, which drops unauthenticated
    connections beyond its MaxStartups (10), so they meet an emulator of
    their own with the embedded SSH server. The listener does not look inside
    the stream: an SSH session that sits idle costs it what these do.
    """
    with tempfile.TemporaryDirectory(prefix="wsbridge-bench-listen-") as workdir:
        emulator = start_emulator(Path(workdir) / "state")
        argv = [sys.executable, "-m", "wsbridge", "listen", "--server", emulator.url]
        argv += ["--access-key-file", str(emulator.access_key_file), "demo"]
        listen = ServerProcess("wsbridge listen", argv)
        connections: list[socket.socket] = []
        try:
            match = listen.stdout.wait_for(LISTENING, START_TIMEOUT)
            port = int(match.group(1))
            # One connection first, so that what every session imports or
            # allocates once counts in the baseline, not per connection.
            connections.append(open_idle_connection(port))
            await_server_banner(connections[0])
            baseline_kib, _ = process_memory_kib(listen.pid)
            for _ in range(IDLE_CONNECTIONS - 1):
                connections.append(open_idle_connection(port))
            for connection in connections[1:]:
                await_server_banner(connection)
            rss_kib, peak_kib = process_memory_kib(listen.pid)
        finally:
            for connection in connections:
                connection.close()
            listen.stop()
            emulator.stop()
    per_connection = (rss_kib - baseline_kib) / (IDLE_CONNECTIONS - 1)
    return [
        Result("listen RSS, 1 idle connection", "MiB", baseline_kib / 1024),
        Result(f"listen RSS, {IDLE_CONNECTIONS} idle", "MiB", rss_kib / 1024),
        Result(f"listen peak RSS, {IDLE_CONNECTIONS} idle", "MiB", peak_kib / 1024),
        Result("listen RSS per idle conn.", "KiB", per_connection),
    ]


Measurement = Callable[[Bench], list[Result]]
MEASUREMENTS: list[Measurement] = [
    measure_throughput,
    measure_echo_round_trip,
    measure_listen_idle_memory,
]


# --- report -----------------------------------------------------------------


def print_report(bench: Bench, results: Sequence[Result]) -> None:
    """Print the results as a table with the bridged/direct ratio."""
    print(
        f"wsbridge bench: {bench.size // MIB} MiB per transfer, "
        f"{bench.reps} repetitions, {bench.echoes} echoes each; medians; "
        "ssh -c aes128-gcm, no compression"
    )
    header = (
        f"{'':30} {'unit':>6} {'openssh direct':>15} {'via wsbridge':>13} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    # Rows that compare the two routes first, wsbridge's own costs after.
    for result in sorted(results, key=lambda result: result.direct is None):
        direct = "" if result.direct is None else f"{result.direct:15.2f}"
        ratio = (
            "" if result.direct is None else f"{result.bridged / result.direct:6.2f}"
        )
        print(
            f"{result.label:30} {result.unit:>6} {direct:>15} "
            f"{result.bridged:13.2f} {ratio:>6}"
        )
    print("CPU per GiB is net of a connect-only run; ratio is via wsbridge / direct.")


def set_up(workdir: Path, size: int, reps: int, echoes: int) -> Bench:
    """Start sshd and the emulator, and pin sshd's host key for both routes."""
    identity = generate_key(workdir / "id_ed25519")
    sshd = start_sshd(workdir / "sshd")
    sshd.authorize(Path(f"{identity}.pub"))
    try:
        emulator = start_emulator(
            workdir / "emulator" / "state", ssh_upstream=sshd.address
        )
    except BaseException:
        sshd.stop()
        raise
    # Both routes end at the same sshd, so one pinned host key serves both.
    openssh = OpenSSH(identity=identity, known_hosts=workdir / "known_hosts")
    write_known_hosts(openssh.known_hosts, public_key_line(sshd.host_key))
    inbox = UsageInbox(workdir / "usage.sock")
    return Bench(sshd, emulator, openssh, inbox, size, reps, echoes)


def main(argv: Sequence[str]) -> int:
    """Run the bench, or, in its internal mode, the rusage-recording shim."""
    if len(argv) > 1 and argv[1] == RECORD_RUSAGE:
        return record_rusage(Path(argv[2]), argv[4:])

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64, help="bytes per transfer")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per measure")
    parser.add_argument("--echoes", type=int, default=200, help="echoes per session")
    options = parser.parse_args(argv[1:])

    with tempfile.TemporaryDirectory(prefix="wsbridge-bench-") as workdir:
        bench = set_up(
            Path(workdir), options.size_mib * MIB, options.reps, options.echoes
        )
        try:
            results = [row for measure in MEASUREMENTS for row in measure(bench)]
        finally:
            bench.inbox.close()
            bench.emulator.stop()
            bench.sshd.stop()
    print_report(bench, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

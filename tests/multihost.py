"""Many machines on one: hosts made of Linux namespaces, joined by a bridge, sharing no file system.

Each *host* is a network namespace with one interface (``eth0``) on a private subnet
(``10.213.<n>.0/24``, ``<n>`` chosen per run), plugged into a bridge that lives in a namespace
of its own (the machine's own network, routes and ports are never touched), and one process
(the host's *init*, pid 1 of a PID namespace of its own) holding a mount namespace in which

- ``/tmp`` is a directory of this host alone (so is ``/dev/shm``): what one host writes
  under ``/tmp`` no other host can read, and a process's working directory is
  ``/tmp/work`` of its host;
- the host name is the host's own, and ``/etc/hosts`` names every host.

Every command of a host enters those namespaces (``nsenter``). Losing a host is
SIGKILL to every process in its network namespace, init included; booting it again keeps
its ``/tmp`` (its disk). The hosts:

========== =================================================================
storage    moto's S3 API server (``http://<ip>:5000``), the only shared storage
scheduler  ``dask scheduler --host <ip> --port 8786``
worker1..  ``dask worker tcp://<scheduler>:8786 --host <ip> --nworkers 1 --nthreads 1``
driver     runs ``shardflow run`` / ``predict`` / ``export``
scorer     a second client host, for commands that read a run another host wrote
========== =================================================================

Names (namespaces, the base directory under /tmp) start with ``sfmh-<pid>-<random>``: runs
side by side do not clash, and what a crashed run left is removed by the next one (those whose
``<pid>`` is gone). Everything is torn down by process id when the context ends, on failure
too, and at exit.

Needs Linux, root, ``ip`` (iproute2), ``unshare``, ``nsenter`` and ``ss``;
:func:`unavailable` says why not otherwise.

By hand::

    python -m tests.multihost up              # start the hosts and the cluster; Ctrl-C ends them
    python -m tests.multihost run -- --set train.models=[xgboost,mlp]   # one job across the hosts
    python -m tests.multihost clean           # remove what crashed runs left
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

PREFIX = "sfmh"
SCHEDULER_PORT = 8786
S3_PORT = 5000
BUCKET = "shardflow-multihost"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "shardflow-multihost",
    "AWS_SECRET_ACCESS_KEY": "not-a-real-secret-5c1e",
    "AWS_DEFAULT_REGION": "us-east-1",
}
HERE = Path(__file__).resolve()
REPO = HERE.parent.parent

#: Variables of this process that a host never inherits: credentials, endpoints and proxies
#: of the machine (a host has the test's own), and Dask's or pytest's state.
_DROPPED_ENV = ("AWS_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "DASK_", "PYTEST_", "SHARDFLOW_")


def unavailable() -> str | None:
    """Why hosts cannot be made here (None when they can)."""
    if not sys.platform.startswith("linux"):
        return "multi-host tests need Linux network namespaces"
    if os.geteuid() != 0:
        return "multi-host tests need root (network namespaces, mounts)"
    missing = [tool for tool in ("ip", "unshare", "nsenter", "ss") if shutil.which(tool) is None]
    if missing:
        return f"multi-host tests need {', '.join(missing)} (iproute2, util-linux)"
    for what, path in (("the Python", Path(sys.executable).resolve()), ("the checkout", HERE.resolve())):
        if Path("/tmp") in path.parents:  # every host mounts a /tmp of its own over it
            return f"multi-host tests cannot run with {what} under /tmp ({path}): each host's private /tmp hides it"
    probe = f"{PREFIX}-{os.getpid()}-probe{uuid.uuid4().hex[:4]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _netns_pids(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split()]


def _kill_netns(netns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in ``netns`` until none is left."""
    deadline = time.monotonic() + timeout
    while (pids := _netns_pids(netns)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _owner_alive(name: str) -> bool:
    """Whether the process that made ``sfmh-<pid>-...`` still runs."""
    try:
        pid = int(name.split("-")[1])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def clean_stale() -> list[str]:
    """Remove the namespaces and directories of runs whose process is gone; returns their names."""
    removed = []
    listed = _ip("netns", "list", check=False).stdout.splitlines() if shutil.which("ip") else []
    for line in listed:
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{PREFIX}-") and not _owner_alive(name):
            _kill_netns(name)
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    for path in Path("/tmp").glob(f"{PREFIX}-*"):
        if path.is_dir() and not _owner_alive(path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _free_subnet() -> int:
    """A third octet ``n`` such that no route of this machine touches 10.213.n.0/24 (the
    hosts' subnet lives in namespaces of its own; this only keeps it unambiguous)."""
    import ipaddress

    routes = []
    for word in _ip("route", check=False).stdout.split():
        with contextlib.suppress(ValueError):
            routes.append(ipaddress.ip_network(word, strict=False))
    free = [n for n in range(1, 255) if not any(r.overlaps(ipaddress.ip_network(f"10.213.{n}.0/24")) for r in routes)]
    return random.choice(free) if free else random.randint(1, 254)


class Host:
    """One machine: a network namespace, and an init process holding its mounts and name."""

    def __init__(self, net: MultiHost, name: str, ip: str):
        self.net, self.name, self.ip = net, name, ip
        self.netns = f"{net.tag}-{name}"
        self.root = net.base / name  #: in this process's view; ``root / "tmp"`` is the host's /tmp
        self.init = None  #: the ``unshare`` process whose child is the host's pid 1
        self.pid1 = None  #: that child's pid, in this process's view
        self.procs: list[subprocess.Popen] = []

    # ------------------------------------------------------------------ the machine

    def make(self, index: int) -> None:
        _ip("netns", "add", self.netns)
        _ip("-n", self.netns, "link", "set", "lo", "up")
        _ip(
            "-n",
            self.net.switch,
            "link",
            "add",
            f"v{index}",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.netns,
        )
        _ip("-n", self.net.switch, "link", "set", f"v{index}", "master", "br0", "up")
        _ip("-n", self.netns, "addr", "add", f"{self.ip}/24", "dev", "eth0")
        _ip("-n", self.netns, "link", "set", "eth0", "up")
        (self.root / "tmp" / "work").mkdir(parents=True, exist_ok=True)

    def boot(self, timeout: float = 10.0) -> None:
        """Start the host's init: pid 1 of a new PID namespace, its own /tmp, /dev/shm and name."""
        setup = (
            'mount --bind "$1" /etc/hosts && mount --bind "$2" /tmp && '
            'mount -t tmpfs -o size=2g tmpfs /dev/shm && hostname "$3" && exec sleep infinity'
        )
        self.init = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc"]
            + ["--propagation", "private", "--", "sh", "-c", setup, "sh"]
            + [str(self.net.base / "hosts"), str(self.root / "tmp"), self.hostname],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.init.pid}/task/{self.init.pid}/children")
            with contextlib.suppress(OSError, IndexError, ValueError):
                pid = int(children.read_text().split()[0])
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":  # mounts done
                    self.pid1 = pid
                    return
            if self.init.poll() is not None:
                raise RuntimeError(f"host {self.name} did not boot (exit {self.init.returncode})")
            time.sleep(0.02)
        raise RuntimeError(f"host {self.name} did not boot within {timeout}s")

    @property
    def hostname(self) -> str:
        return f"{self.name}-{self.net.tag.split('-')[-1]}"

    def crash(self) -> None:
        """Lose the machine: SIGKILL every process of it, init included (its /tmp stays)."""
        _kill_netns(self.netns)
        for proc in [*self.procs, self.init]:
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.wait(timeout=10)
        self.procs, self.init, self.pid1 = [], None, None

    def reboot(self) -> None:
        self.crash()
        self.boot()

    def stop_processes(self) -> None:
        """SIGKILL every process of this host but its init (the machine stays up)."""
        keep = {self.pid1, self.init.pid if self.init else None}
        deadline = time.monotonic() + 10
        while (pids := [p for p in _netns_pids(self.netns) if p not in keep]) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
        self.procs = []

    # ------------------------------------------------------------------ running on it

    def argv(self, command: list, cwd: str = "/tmp/work") -> list:
        if self.pid1 is None:
            raise RuntimeError(f"host {self.name} is down")
        return ["nsenter", "-t", str(self.pid1), "-n", "-m", "-u", "-p", f"--wdns={cwd}", "--", *map(str, command)]

    def env(self, extra: dict | None = None) -> dict:
        return {**self.net.env, **(extra or {})}

    def popen(self, command: list, *, log: str, env: dict | None = None) -> subprocess.Popen:
        """Start ``command`` on this host in the background, its output in ``<host>/tmp/<log>``."""
        path = self.root / "tmp" / log
        with open(path, "ab") as out:
            proc = subprocess.Popen(
                self.argv(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(env),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(self, command: list, *, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``command`` on this host and wait; its output is captured."""
        proc = subprocess.Popen(
            self.argv(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(env),
            start_new_session=True,
        )
        self.procs.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n[multihost: killed after {timeout}s]"
        finally:
            self.procs.remove(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def path(self, inside: str) -> Path:
        """A path under this host's /tmp, as this process sees it."""
        relative = Path(inside).relative_to("/tmp")
        return self.root / "tmp" / relative

    def log(self, name: str) -> str:
        path = self.root / "tmp" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def listening(self) -> list[tuple[str, int, str]]:
        """TCP sockets listening on this host: ``(address, port, process and pid)``."""
        out = subprocess.run(["ip", "netns", "exec", self.netns, "ss", "-ltnpH"], capture_output=True, text=True).stdout
        found = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            address, _, port = fields[3].rpartition(":")
            found.append((address.strip("[]"), int(port), " ".join(fields[5:])))
        return found

    def wait_listening(self, port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p == port for _, p, _ in self.listening()):
                return
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"nothing listens on {self.name}:{port}")


class MultiHost:
    """The hosts (see the module's notes) as a context manager: made and started on entry, torn
    down on exit, on failure and at this process's exit.

    Parameters
    ----------
    workers : int
        Worker hosts (``worker1``, ``worker2``, ...), one Dask worker of one thread each.
    memory_limit : str
        Each worker's memory limit.
    """

    def __init__(self, workers: int = 2, memory_limit: str = "2GB"):
        self.tag = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.subnet = f"10.213.{_free_subnet()}"
        self.switch = f"{self.tag}-net"
        self.base = Path("/tmp") / self.tag  # under /tmp: every host has a /tmp of its own over it
        self.memory_limit = memory_limit
        names = {"scheduler": 2, "storage": 10, "driver": 20, "scorer": 21}
        names.update({f"worker{i}": 10 + i for i in range(1, workers + 1)})
        self.hosts = {name: Host(self, name, f"{self.subnet}.{octet}") for name, octet in names.items()}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_ENV)}
        self.env.pop("TMPDIR", None)
        self.env.update(
            CREDENTIALS,
            AWS_ENDPOINT_URL=self.s3_endpoint,  # the command line's endpoint (predict, export)
            SHARDFLOW_STORAGE_ENDPOINTS=self.s3_endpoint,  # configs may name it too
            DASK_DISTRIBUTED__WORKER__DAEMON="False",
        )
        self._made = False

    # ------------------------------------------------------------------ names

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    @property
    def workers(self) -> list[Host]:
        return [h for name, h in self.hosts.items() if name.startswith("worker")]

    @property
    def scheduler_address(self) -> str:
        return f"tcp://{self.hosts['scheduler'].ip}:{SCHEDULER_PORT}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.hosts['storage'].ip}:{S3_PORT}"

    # ------------------------------------------------------------------ life

    def __enter__(self) -> MultiHost:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        clean_stale()
        atexit.register(self.close)
        self._made = True
        self.base.mkdir(parents=True)
        (self.base / "hosts").write_text(
            "127.0.0.1 localhost\n" + "".join(f"{h.ip} {h.hostname} {h.name}\n" for h in self.hosts.values())
        )
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for index, host in enumerate(self.hosts.values()):
            host.make(index)
            host.boot()
        self.start_storage()
        self.start_scheduler()
        for host in self.workers:
            self.start_worker(host)
        self.wait_for_workers(len(self.workers))

    def close(self) -> None:
        """Kill every process of every host (by the pids in its namespaces), delete the
        namespaces (their veths and the bridge go with them) and the hosts' directories."""
        if not self._made:
            return
        self._made = False
        for host in self.hosts.values():
            host.crash()
            _ip("netns", "delete", host.netns, check=False)
        _kill_netns(self.switch)
        _ip("netns", "delete", self.switch, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        atexit.unregister(self.close)

    # ------------------------------------------------------------------ services

    def start_storage(self) -> None:
        storage = self.hosts["storage"]
        proc = storage.popen([sys.executable, "-m", "moto.server", "-H", storage.ip, "-p", S3_PORT], log="moto.log")
        storage.wait_listening(S3_PORT, proc=proc)
        made = self.hosts["driver"].run([sys.executable, HERE, "s3-mkbucket", BUCKET], timeout=120)
        if made.returncode:
            raise RuntimeError(f"cannot make the bucket: {made.stderr[-2000:]}")

    def start_scheduler(self) -> None:
        scheduler = self.hosts["scheduler"]
        proc = scheduler.popen(
            [*_dask("scheduler"), "--host", scheduler.ip, "--port", SCHEDULER_PORT]
            + ["--no-dashboard", "--dashboard-address", f"{scheduler.ip}:0"],
            log="scheduler.log",
        )
        scheduler.wait_listening(SCHEDULER_PORT, proc=proc)

    def start_worker(self, host: Host) -> subprocess.Popen:
        return host.popen(
            [*_dask("worker"), self.scheduler_address, "--host", host.ip, "--nworkers", 1, "--nthreads", 1]
            + ["--memory-limit", self.memory_limit, "--name", host.name]
            + ["--no-dashboard", "--dashboard-address", f"{host.ip}:0"],
            log="worker.log",
        )

    def wait_for_workers(self, n: int, timeout: float = 120.0) -> None:
        """Until the scheduler has ``n`` workers (asked from the driver host)."""
        done = self.hosts["driver"].run(
            [sys.executable, HERE, "wait-workers", self.scheduler_address, n, timeout], timeout=timeout + 30
        )
        if done.returncode:
            logs = "\n".join(f"--- {h.name}\n{h.log('worker.log')[-1500:]}" for h in self.workers)
            raise RuntimeError(f"{n} workers did not join: {done.stderr[-1500:]}\n{logs}")

    def restart_worker_host(self, host: Host) -> None:
        """A lost worker host back: booted again (its /tmp as it was) with a fresh worker."""
        host.reboot()
        self.start_worker(host)

    def restart_scheduler_host(self) -> None:
        """A lost scheduler host back with a scheduler at the same address, and a fresh worker on
        every worker host whose worker left with the old scheduler (Dask workers exit then)."""
        self.hosts["scheduler"].reboot()
        self.start_scheduler()
        for host in self.workers:
            host.stop_processes()  # what is left of the old worker, as a service manager would
            self.start_worker(host)
        self.wait_for_workers(len(self.workers))

    # ------------------------------------------------------------------ data

    def put(self, local: Path, url: str) -> None:
        """Copy ``local`` (a directory of this process) into the store at ``url``, from the driver."""
        driver = self.hosts["driver"]
        staged = f"/tmp/work/upload-{uuid.uuid4().hex[:6]}"
        shutil.copytree(local, driver.path(staged))
        done = driver.run([sys.executable, HERE, "s3-put", staged, url], timeout=300)
        shutil.rmtree(driver.path(staged), ignore_errors=True)
        if done.returncode:
            raise RuntimeError(f"upload to {url} failed: {done.stderr[-2000:]}")

    def get(self, url: str) -> Path:
        """A copy of everything under ``url``, fetched by the driver; returned as this process sees it."""
        driver = self.hosts["driver"]
        inside = f"/tmp/work/fetched-{uuid.uuid4().hex[:6]}"
        done = driver.run([sys.executable, HERE, "s3-get", url, inside], timeout=300)
        if done.returncode:
            raise RuntimeError(f"download of {url} failed: {done.stderr[-2000:]}")
        return driver.path(inside)

    def shardflow(self, host: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
        """``shardflow <args>`` on ``host``; the result has ``seconds`` (wall time)."""
        started = time.monotonic()
        done = self.hosts[host].run([sys.executable, "-m", "shardflow", *args], timeout=timeout)
        done.seconds = time.monotonic() - started
        return done


def _dask(what: str) -> list:
    """``dask scheduler``/``dask worker``: the console script beside this Python, else the module."""
    script = Path(sys.executable).parent / "dask"
    return [script, what] if script.exists() else [sys.executable, "-m", f"distributed.cli.dask_{what}"]


def job_config(base_url: str) -> str:
    """The default trips job reading ``<base_url>/trips`` and its zones table (YAML text; options
    go on the command line as ``--set``)."""
    from shardflow.pipelines.setup.config import default_config_path

    text = default_config_path().read_text()
    for name in ("trips", "zones.parquet"):
        if f"path: {name} " not in text:
            raise RuntimeError(f"{default_config_path()}: no 'path: {name}' to point at {base_url}")
        text = text.replace(f"path: {name} ", f"path: {base_url}/{name} ", 1)
    return text


# ---------------------------------------------------------------------- helpers run inside hosts


def _fs():
    import s3fs

    return s3fs.S3FileSystem(use_listings_cache=False)  # endpoint and credentials: the environment


def _inside(args) -> int:
    if args.command == "s3-mkbucket":
        _fs().mkdir(args.bucket)
    elif args.command == "s3-put":
        _fs().put(f"{args.local.rstrip('/')}/", args.url.removeprefix("s3://").rstrip("/") + "/", recursive=True)
    elif args.command == "s3-get":
        fs = _fs()
        prefix = args.url.removeprefix("s3://").rstrip("/")
        for key in fs.find(prefix):
            target = Path(args.local) / key[len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(fs.cat_file(key))
        Path(args.local).mkdir(parents=True, exist_ok=True)
    elif args.command == "s3-wait":
        return _wait_for_state(args)
    elif args.command == "wait-workers":
        from distributed import Client

        with Client(args.address, timeout="30s") as client:
            client.wait_for_workers(args.n, timeout=args.timeout)
    return 0


def _wait_for_state(args) -> int:
    """Until an object whose key ends with ``args.suffix`` under ``args.url`` holds JSON with
    ``args.key`` >= ``args.at_least``; prints the key and exits 0 (1 after the timeout)."""
    fs = _fs()
    prefix = args.url.removeprefix("s3://")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            for key in fs.find(prefix):
                if key.endswith(args.suffix):
                    state = json.loads(fs.cat_file(key))
                    if state.get(args.key, 0) >= args.at_least and not state.get("finished"):
                        print(key, state.get(args.key), flush=True)
                        return 0
        time.sleep(0.05)
    return 1


# ---------------------------------------------------------------------- by hand


def _up(args) -> int:
    with MultiHost(workers=args.workers) as hosts:
        print(f"scheduler {hosts.scheduler_address}, S3 {hosts.s3_endpoint} (bucket {BUCKET})")
        for host in hosts.hosts.values():
            print(f"  {host.name:10} {host.ip:14} {shlex.join(host.argv(['bash']))}")
        print("environment for commands on a host:", " ".join(f"{k}={v}" for k, v in CREDENTIALS.items()))
        print("Ctrl-C tears everything down")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


def _run_job(args) -> int:
    with MultiHost(workers=args.workers) as hosts:
        driver = hosts["driver"]
        made = hosts.shardflow("driver", "generate", "--rows", args.rows, "--out", "/tmp/work/data", "--seed", 7)
        if made.returncode:
            sys.stderr.write(made.stderr)
            return made.returncode
        hosts.put(driver.path("/tmp/work/data"), f"s3://{BUCKET}/data")
        driver.path("/tmp/work/job.yaml").write_text(job_config(f"s3://{BUCKET}/data"))
        extra = [a for a in args.shardflow_args if a != "--"]
        runs = f"s3://{BUCKET}/runs"
        done = hosts.shardflow(
            "driver", "run", "-c", "job.yaml", "--cluster", hosts.scheduler_address, "--runs-dir", runs, *extra
        )
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        print(f"multihost: shardflow run exited {done.returncode} after {done.seconds:.1f}s", file=sys.stderr)
        return done.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.multihost",
        description=__doc__.split("\n\n")[0],
        epilog="Needs Linux, root, ip, unshare, nsenter and ss. See tests/multihost.py's docstring.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{up,run,clean}")
    up = commands.add_parser("up", help="start the hosts and the cluster, print how to enter them, wait for Ctrl-C")
    up.add_argument("--workers", type=int, default=2)
    job = commands.add_parser("run", help="run the default job across the hosts, data and runs in S3")
    job.add_argument("--workers", type=int, default=2)
    job.add_argument("--rows", type=int, default=24_000)
    job.add_argument("shardflow_args", nargs=argparse.REMAINDER, help="after --: more `shardflow run` arguments")
    commands.add_parser("clean", help="remove namespaces and directories that crashed runs left")
    # Used inside the hosts by the harness itself.
    mk = commands.add_parser("s3-mkbucket")
    mk.add_argument("bucket")
    put = commands.add_parser("s3-put")
    put.add_argument("local")
    put.add_argument("url")
    get = commands.add_parser("s3-get")
    get.add_argument("url")
    get.add_argument("local")
    wait = commands.add_parser("s3-wait")
    wait.add_argument("url")
    wait.add_argument("suffix")
    wait.add_argument("key")
    wait.add_argument("at_least", type=float)
    wait.add_argument("timeout", type=float)
    workers = commands.add_parser("wait-workers")
    workers.add_argument("address")
    workers.add_argument("n", type=int)
    workers.add_argument("timeout", type=float)
    args = parser.parse_args(argv)
    if args.command in ("up", "run"):
        reason = unavailable()
        if reason:
            print(f"multihost: {reason}", file=sys.stderr)
            return 2
        return _up(args) if args.command == "up" else _run_job(args)
    if args.command == "clean":
        for name in clean_stale():
            print("removed", name)
        return 0
    return _inside(args)


if __name__ == "__main__":
    sys.exit(main())

"""Real SLURM clusters on this machine, for the slow tests (root only): Debian's slurm-wlm and munge, the
daemons started by hand with a private munge key and socket, state and logs in a temporary directory.

``one_node_cluster()``: slurmctld and one slurmd on 127.0.0.1, on free ports
(``CommunicationParameters=NoInAddrAny,NoCtldInAddrAny``: nothing listens on the machine's other addresses).

``two_node_cluster()``: two "nodes", each a network namespace made here (``ddo-n1-<pid>``, ``ddo-n2-<pid>``)
joined by a veth pair whose two addresses (``10.213.0.1/30``, ``10.213.0.2/30``) exist only inside those
namespaces. Each slurmd runs in its namespace under its own host name (a UTS namespace: ``node1``,
``node2``) and sees a hosts file naming both nodes (bind-mounted over ``/etc/hosts`` in a private mount
namespace), as on a real cluster: SLURM's node list resolves, so Lightning's master address
(the first node of ``SLURM_NODELIST``) and gloo's own address (the host name) are the namespace addresses.
slurmctld runs on ``node1`` (a head node that also computes); the client commands run in ``node1``'s
namespace (``Cluster.run``, ``Cluster.prefix``). munged is shared: its Unix socket is a file, reachable from
every network namespace. Teardown (also after a failure): jobs cancelled, daemons stopped, every process
left in the namespaces killed, the namespaces and the veth pair deleted.

The daemons enter the namespaces with ``nsenter --net`` rather than ``ip netns exec``: the latter mounts a
fresh ``/sys`` in which ``/sys/fs/cgroup`` is missing, and slurmd refuses to start without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            return f"--- {path}\n" + "".join(f.readlines()[-n:])
    except OSError:
        return f"--- {path}: missing\n"


def install_slurm():
    """sbatch & co. from Debian packages (about a minute); skips, with the reason, where that is impossible."""
    if shutil.which("sbatch") and shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    if shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = "/usr/sbin/policy-rc.d"  # keep the packages' init scripts from starting system daemons
    added_policy = not os.path.exists(policy)
    if added_policy:
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
    start = time.monotonic()
    try:
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # stale package lists
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        if added_policy:
            os.remove(policy)
    if done.returncode != 0:
        pytest.skip(f"could not install slurm-wlm and munge with apt-get: {done.stderr.strip()[-500:]}")
    print(f"[slurm] apt-get install slurm-wlm munge: {time.monotonic() - start:.0f} s", file=sys.stderr)


class Cluster:
    """The daemons of a test cluster and the client side: ``run`` a SLURM command (in the login namespace
    when there is one), ``show_job``, ``wait_for``; ``logs`` for failure messages; ``stop``."""

    def __init__(self, root, prefix=()):
        self.root = root
        self.conf = os.path.join(root, "slurm.conf")
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "SLURM_CONF": self.conf}
        self.prefix = list(prefix)  # what puts a command where the controller is reachable
        self.procs = []

    def run(self, *cmd, timeout=60):
        return subprocess.run([*self.prefix, *cmd], env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, name, *cmd):
        log = open(os.path.join(self.root, f"{name}.stdout"), "w")
        self.procs.append(
            (
                name,
                subprocess.Popen(
                    cmd,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                ),
            )
        )
        log.close()

    def logs(self):
        names = sorted(n for n in os.listdir(self.root) if n.endswith((".log", ".stdout")))
        return "\n".join(tail(os.path.join(self.root, n)) for n in names)

    def show_job(self, job_id):
        """`scontrol show job` as a dict of its Key=Value fields (values without spaces)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "show", "job", str(job_id)).stdout))

    def wait_for(self, job_id, timeout=300, poll=0.5):
        """The job's fields once it reached a terminal state (or the last ones seen when ``timeout`` ran out)."""
        deadline, job = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            job = self.show_job(job_id)
            if job.get("JobState") in TERMINAL:
                break
            time.sleep(poll)
        return job

    def wait_idle(self, nodes, timeout=60):
        """Until sinfo shows every node idle; a daemon that died or a timeout fails the test with the logs."""
        deadline, state = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            dead = [name for name, p in self.procs if p.poll() is not None]
            if dead:
                pytest.fail(f"{dead} exited\n{self.logs()}")
            state = self.run("sinfo", "--noheader", "--Node", "--format=%N %T").stdout.split()
            if state == [word for node in nodes for word in (node, "idle")]:
                return
            time.sleep(0.5)
        pytest.fail(f"nodes not idle after {timeout} s (sinfo: {state!r})\n{self.logs()}")

    def stop(self):
        if any(name == "slurmctld" and p.poll() is None for name, p in self.procs):
            self.run("scancel", "--user=root", "--full")
        for _name, proc in reversed(self.procs):  # slurmd(s), slurmctld, munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("the real-SLURM tests run their own slurmctld/slurmd and need root")
    install_slurm()


def _start_munged(cluster):
    """munged with a fresh key; returns its socket path (short: it must fit in sun_path)."""
    munge_dir = os.path.join(cluster.root, "munge")
    os.makedirs(munge_dir, mode=0o700)
    key, sock = os.path.join(munge_dir, "munge.key"), os.path.join(munge_dir, "munge.socket")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    cluster.start(
        "munged",
        shutil.which("munged"),
        "--foreground",
        "--force",
        f"--key-file={key}",
        f"--socket={sock}",
        f"--pid-file={munge_dir}/munged.pid",
        f"--log-file={cluster.root}/munged.log",
        f"--seed-file={munge_dir}/munged.seed",
    )
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sock


def _slurm_conf(root, sock, controller, ctld_port, slurmd_port, nodes):
    """slurm.conf: ``controller`` is ``name(address)``; ``nodes`` are ``(name, address, cpus)``; per-node
    spool, pid and log files (``%n``), so that two slurmd can share the directory."""
    node_lines = "".join(f"NodeName={n} NodeAddr={a} CPUs={c} State=UNKNOWN\n" for n, a, c in nodes)
    return f"""\
ClusterName=ddotest
SlurmctldHost={controller}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=600
SchedulerParameters=sched_interval=2
{node_lines}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def one_node_cluster():
    """A one-node cluster on 127.0.0.1 (the machine's host name as the node name), private ports."""
    _need_root()
    root = tempfile.mkdtemp(prefix="ddo-slurm-")  # short: the munge socket path must fit in sun_path
    os.chmod(root, 0o755)
    cluster = Cluster(root)
    try:
        sock = _start_munged(cluster)
        host = socket.gethostname().split(".")[0]
        cpus = len(os.sched_getaffinity(0))
        for d in ("state", f"spool-{host}"):
            os.makedirs(os.path.join(root, d))
        with open(cluster.conf, "w") as f:
            f.write(
                _slurm_conf(root, sock, f"{host}(127.0.0.1)", free_port(), free_port(), [(host, "127.0.0.1", cpus)])
            )
        cluster.start("slurmctld", shutil.which("slurmctld"), "-D", "-i")
        cluster.start("slurmd", shutil.which("slurmd"), "-D", "-N", host)
        cluster.wait_idle([host])
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- two nodes in network namespaces ------------------------------------------------------------------

SUBNET = "10.213.0"  # a /30: .1 node1, .2 node2; only inside the namespaces this module creates
NODES = ("node1", "node2")
NS_PATTERN = re.compile(r"ddo-n[12]-(\d+)")


def _ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _kill_namespace(ns):
    """Kill every process still in network namespace ``ns`` (job steps outlive slurmd), then delete it."""
    for _ in range(20):
        pids = [int(p) for p in _ip("netns", "pids", ns).stdout.split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        time.sleep(0.2)
    _ip("netns", "del", ns)


def _remove_stale_namespaces():
    """Namespaces of this module left by a test process that no longer exists (killed before its teardown)."""
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = NS_PATTERN.fullmatch(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _kill_namespace(name)


def in_namespace(ns, *inner):
    """The command that runs ``inner`` in network namespace ``ns`` (``nsenter --net``; see the module doc)."""
    return ["nsenter", f"--net=/run/netns/{ns}", *inner]


class TwoNodes(Cluster):
    """A two-node ``Cluster`` plus what the tests assert on: the namespaces, the node names and addresses."""

    namespaces: tuple[str, str]
    addresses = {name: f"{SUBNET}.{i}" for i, name in enumerate(NODES, 1)}


@contextlib.contextmanager
def two_node_cluster():
    """The two-node cluster of the module doc; skips with the reason where namespaces cannot be made."""
    _need_root()
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"the two-node SLURM tests need `{tool}` (iproute2 / util-linux)")
    _remove_stale_namespaces()
    pid = os.getpid()
    ns1, ns2 = f"ddo-n1-{pid}", f"ddo-n2-{pid}"
    veth = (f"ddoa{pid}", f"ddob{pid}")  # created in the host namespace under unique names, then moved
    root = tempfile.mkdtemp(prefix="ddo-2n-")
    os.chmod(root, 0o755)
    cluster = TwoNodes(root, prefix=in_namespace(ns1))
    cluster.namespaces = (ns1, ns2)
    made = []
    try:
        added = _ip("netns", "add", ns1)
        if added.returncode != 0:
            pytest.skip(f"cannot create a network namespace (`ip netns add {ns1}`): {added.stderr.strip()}")
        made.append(ns1)
        steps = [
            ("netns", "add", ns2),
            ("link", "add", veth[0], "type", "veth", "peer", "name", veth[1]),
            ("link", "set", veth[0], "netns", ns1),
            ("link", "set", veth[1], "netns", ns2),
        ]
        for i, (ns, dev) in enumerate(zip((ns1, ns2), veth), 1):
            steps += [
                ("-n", ns, "addr", "add", f"{SUBNET}.{i}/30", "dev", dev),
                ("-n", ns, "link", "set", "lo", "up"),
                ("-n", ns, "link", "set", dev, "up"),
            ]
        for step in steps:
            done = _ip(*step)
            if step[:2] == ("netns", "add") and done.returncode == 0:
                made.append(ns2)
            if done.returncode != 0:
                pytest.skip(f"cannot build the two-node network (`ip {' '.join(step)}`): {done.stderr.strip()}")
        probe = subprocess.run(
            in_namespace(ns1, "unshare", "--mount", "--uts", "true"), capture_output=True, text=True, timeout=30
        )
        if probe.returncode != 0:
            pytest.skip(f"cannot enter a namespace with private mounts and host name: {probe.stderr.strip()}")

        hosts = os.path.join(root, "hosts")
        with open(hosts, "w") as f:
            f.write("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in cluster.addresses.items()))
        sock = _start_munged(cluster)
        cpus = len(os.sched_getaffinity(0))
        os.makedirs(os.path.join(root, "state"))
        for name in NODES:
            os.makedirs(os.path.join(root, f"spool-{name}"))
        with open(cluster.conf, "w") as f:
            f.write(
                _slurm_conf(
                    root,
                    sock,
                    f"node1({cluster.addresses['node1']})",
                    6817,  # the namespaces are private: SLURM's default ports cannot collide
                    6818,
                    [(n, a, cpus) for n, a in cluster.addresses.items()],
                )
            )

        def on_node(ns, node, *cmd):  # the node's network, host name and hosts file
            script = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'
            return in_namespace(ns, "unshare", "--mount", "--uts", "sh", "-c", script, "sh", hosts, node, *cmd)

        cluster.start("slurmctld", *on_node(ns1, "node1", shutil.which("slurmctld"), "-D", "-i"))
        for ns, node in zip((ns1, ns2), NODES):
            cluster.start(f"slurmd-{node}", *on_node(ns, node, shutil.which("slurmd"), "-D"))
        cluster.wait_idle(NODES)
        yield cluster
    finally:
        cluster.stop()
        for ns in made:
            _kill_namespace(ns)
        for dev in veth:  # only if it never made it into a namespace
            if _ip("link", "show", dev).returncode == 0:
                _ip("link", "del", dev)
        shutil.rmtree(root, ignore_errors=True)

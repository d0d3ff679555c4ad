"""Real Slurm clusters for tests (Debian's slurm-wlm + munge), started as root without systemd.

`SlurmCluster` is one node: this machine. `TwoNodeCluster` is two nodes on this machine, each slurmd in network,
UTS and mount namespaces of its own (its own hostname, address and /etc/hosts), joined by a bridge inside a
third network namespace where slurmctld and the client commands live: the cluster's network exists only
inside namespaces made for it, so nothing on the machine's own network is touched.

`start()` installs the packages if they are missing (apt-get, as root), writes a slurm.conf under a temporary
directory, starts munged, slurmctld and the slurmds, and waits for the nodes to be idle; `stop()` shuts the
daemons down by their pid files (and removes the namespaces). `unavailable()` and `two_nodes_unavailable()` say
why a cluster cannot be had here (tests then skip, saying so).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge", "libpmix-dev"]


def unavailable() -> str | None:
    """A reason no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "the Slurm tests start slurmctld/slurmd/munged and need root"
    if shutil.which("slurmctld") is None:
        if shutil.which("apt-get") is None:
            return "slurm-wlm is not installed and there is no apt-get to install it"
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        if result.returncode != 0 or shutil.which("slurmctld") is None:
            return f"could not install {' '.join(PACKAGES)}: {result.stderr.strip()[-300:]}"
    return None


class SlurmCluster:
    """One node (this machine, 8 declared CPUs), one partition, state under `base`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.conf = base / "slurm.conf"
        self.host = socket.gethostname()
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for key in [k for k in self.env if k.startswith(("SLURM_", "PMI_")) and k != "SLURM_CONF"]:
            del self.env[key]

    #: Extra `slurm/submit-curriculum.sh` arguments that spread a job over the cluster (none: one node).
    submit_options: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()

    cluster_name = "lrun-test"

    def write_conf(self) -> None:
        """slurm.conf: the lines every test cluster shares, this cluster's slurmd and node lines, one partition."""
        for d in ("state", "log"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        partition = "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
        self.conf.write_text(self.common_conf() + self.node_conf() + partition)

    def controller(self) -> str:
        """slurmctld's host and address (SlurmctldHost)."""
        return f"{self.host}(127.0.0.1)"

    def node_conf(self) -> str:
        """The slurmd files and the node: this machine."""
        b = self.base
        return f"""\
SlurmdSpoolDir={b / "spool"}
SlurmdPidFile={b / "slurmd.pid"}
SlurmdLogFile={b / "log" / "slurmd.log"}
NodeName={self.host} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
"""

    def common_conf(self) -> str:
        """slurm.conf lines every test cluster shares."""
        b = self.base
        # Job ids unique across test clusters: MPICH names its shared-memory segments after the job step, and a
        # segment left in /dev/shm by a killed job of an earlier cluster with the same ids breaks MPI_Init.
        first_job = 1000 + int(time.time() * 10) % 50_000_000
        return f"""\
ClusterName={self.cluster_name}
SlurmctldHost={self.controller()}
FirstJobId={first_job}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
DependencyParameters=kill_invalid_depend
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MinJobAge=3600
KillWait=30
MpiDefault=none
ReturnToService=2
StateSaveLocation={b / "state"}
SlurmctldPidFile={b / "slurmctld.pid"}
SlurmctldLogFile={b / "log" / "slurmctld.log"}
JobCompType=jobcomp/filetxt
JobCompLoc={b / "log" / "jobcomp.log"}
"""

    def start(self) -> None:
        """Start munged (if not running), slurmctld and slurmd; wait until the node is idle."""
        self.write_conf()
        self.start_munge()
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=self.env)
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True, env=self.env)
        self.wait_idle(1)

    def start_munge(self) -> None:
        """Start munged unless a working one answers (its socket is a file: every namespace of a test cluster
        reaches it); wait until credentials can be made.

        Whether munged answers, not whether a process of that name exists: a munged that is still exiting (its
        pid file already gone) or a zombie nobody reaped passes `pgrep` and leaves the cluster without
        authentication, which shows only as a controller that never answers."""
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        self.started_munge = False
        deadline = time.time() + 30
        while not _munge_answers():
            if time.time() > deadline:
                raise RuntimeError("munged does not answer (`munge -n` fails) 30 s after it was started")
            if not _live_processes("munged"):
                # --force: a socket or lock left by a munged that was killed does not stop the new one
                subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--force"], check=True)
                self.started_munge = True
            time.sleep(0.2)

    # (180 s: on a loaded 2-core machine, with another pytest worker and a training run beside it, the two-node
    # cluster once took over 60 s to come up)
    def wait_idle(self, count: int, timeout: float = 180) -> None:
        """Wait until `count` nodes are idle; if they never are, the error carries what sinfo and the daemons
        said (the log directory is gone with the test machine by the time anyone reads a CI failure)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            result = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False)
            states = result.stdout.split()
            if states.count("idle") >= count:
                return
            time.sleep(0.5)
        tails = "".join(
            f"\n--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            for log in sorted((self.base / "log").glob("*.log"))
        )
        raise RuntimeError(
            f"{count} Slurm node(s) not idle after {timeout} s (states {states}; sinfo said "
            f"{result.stderr.strip()[-300:]!r}; munged answers: {_munge_answers()}){tails}"
        )

    def daemon_pid_files(self) -> list[Path]:
        """The pid files of this cluster's slurmctld and slurmd(s)."""
        return [self.base / "slurmctld.pid", self.base / "slurmd.pid"]

    def stop(self) -> None:
        """scontrol shutdown, wait for the daemons' pid files' processes, stop munged if we started it."""
        self.run(["scontrol", "shutdown"], check=False)
        for pid_file in self.daemon_pid_files():
            _wait_gone(pid_file)
        self.stop_munge()

    def stop_munge(self) -> None:
        """Stop munged if this cluster started it, and wait until it has exited (by its pid: munged removes its
        pid file before it is gone)."""
        if not getattr(self, "started_munge", False):
            return
        for pid in _live_processes("munged"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
        deadline = time.time() + 30
        while _live_processes("munged") and time.time() < deadline:
            time.sleep(0.1)

    def run(self, command: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**self.env, **kwargs.pop("env", {})},
            check=check,
            timeout=60,
            **kwargs,
        )

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Reason, Restarts, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", job_id]).stdout.split("\n")[0]
        fields = {}
        for item in out.split():
            if "=" in item:
                key, value = item.split("=", 1)
                fields[key] = value
        return fields

    def wait_for(self, job_id: str, states: set[str], timeout: float = 240) -> dict[str, str]:
        """Poll until the job is in one of `states`; returns its fields."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            fields = self.job(job_id)
            if fields.get("JobState") in states:
                return fields
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout} s: {self.job(job_id)}")


def two_nodes_unavailable() -> str | None:
    """A reason no two-node cluster can be made here (no root, no namespaces or veth pairs), or None."""
    reason = unavailable()
    if reason:
        return reason
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"the two-node Slurm tests need `{tool}` (iproute2 / util-linux)"
    probe = f"lrun-probe-{os.getpid()}"
    try:
        for command in (
            ["ip", "netns", "add", probe],
            ["ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1"],
            ["ip", "-n", probe, "link", "add", "b0", "type", "bridge"],
            # what a node's holder does: its own mount and UTS namespaces, a tmpfs and a hostname
            [
                "nsenter",
                f"--net=/run/netns/{probe}",
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--uts",
                "--",
                "sh",
                "-c",
                "mount -t tmpfs lrun-probe /dev/shm && hostname lrun-probe",
            ],
        ):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                return f"cannot make network namespaces here (`{' '.join(command)}`: {result.stderr.strip()})"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class TwoNodeCluster(SlurmCluster):
    """Two slurmd nodes (`lrunnode1`, `lrunnode2`, 4 CPUs each) in namespaces of their own on this machine.

    Layout: a "lab" network namespace holds a bridge (10.77.0.1, slurmctld's address, where the client
    commands run, as on a login node); each node's network namespace holds one end of a veth pair whose other
    end is on the bridge (10.77.0.11 and .12). Every daemon runs in a UTS namespace (the node's hostname) and a
    mount namespace in which a hosts file for the cluster is bound over /etc/hosts. Processes a slurmd starts
    (job scripts, srun steps, MPI ranks) inherit its namespaces: they see their node's name and address.
    """

    nodes = ("lrunnode1", "lrunnode2")
    submit_options = ("--", "--nodes=2")
    SUBNET = "10.77.0"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        tag = f"{os.getpid() % 100000}"
        self.lab = f"lrun-lab-{tag}"
        self.namespaces = {node: f"lrun-{node}-{tag}" for node in self.nodes}
        self.addresses = {node: f"{self.SUBNET}.{11 + i}" for i, node in enumerate(self.nodes)}
        self.hosts_file = base / "hosts"
        self.holders: dict[str, subprocess.Popen] = {}

    cluster_name = "lrun-two"

    def controller(self) -> str:
        return f"{self.host}({self.SUBNET}.1)"

    def node_conf(self) -> str:
        """%n: each slurmd its own spool, pid and log file. SlurmdTimeout: a dead node is noticed in seconds."""
        b = self.base
        nodes = "".join(
            f"NodeName={node} NodeAddr={address} CPUs=4 State=UNKNOWN\n" for node, address in self.addresses.items()
        )
        return f"""\
SlurmdSpoolDir={b / "spool-%n"}
SlurmdPidFile={b / "slurmd-%n.pid"}
SlurmdLogFile={b / "log" / "slurmd-%n.log"}
SlurmdTimeout=10
{nodes}"""

    def write_conf(self) -> None:
        """slurm.conf, and the hosts file every machine of the cluster sees as /etc/hosts."""
        super().write_conf()
        lines = ["127.0.0.1 localhost", f"{self.SUBNET}.1 {self.host}"]
        lines += [f"{address} {node}" for node, address in self.addresses.items()]
        self.hosts_file.write_text("\n".join(lines) + "\n")

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def make_network(self) -> None:
        """The lab namespace with its bridge, and one namespace per node wired to it by a veth pair."""
        for ns in (self.lab, *self.namespaces.values()):
            self._ip("netns", "add", ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
        self._ip("-n", self.lab, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.lab, "addr", "add", f"{self.SUBNET}.1/24", "dev", "br0")
        self._ip("-n", self.lab, "link", "set", "br0", "up")
        for i, (node, ns) in enumerate(self.namespaces.items()):
            self._ip("-n", self.lab, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("-n", self.lab, "link", "set", f"v{i}", "master", "br0", "up")
            self._ip("-n", ns, "addr", "add", f"{self.addresses[node]}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")

    def _hold(self, name: str, namespace: str, hostname: str | None) -> None:
        """A process that holds a machine's namespaces (network; UTS with its hostname; mount, with the cluster's
        hosts file and, on a node, a /dev/shm of its own, as real nodes have); every process of that machine is
        started inside them with nsenter (`inside`)."""
        setup = f"mount --bind {self.hosts_file} /etc/hosts"
        if hostname:  # a node: shared memory not shared with the other node
            setup += " && mount -t tmpfs -o size=1g,mode=1777 lrun-shm /dev/shm"
        ready = self.base / f"ready-{name}"
        ready.unlink(missing_ok=True)
        setup += f" && hostname {hostname or self.host} && touch {ready}"  # the file: every step above is done
        unshare = ["unshare", "--mount", "--propagation", "private", "--uts"]
        holder = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{namespace}",
                "--",
                *unshare,
                "--",
                "sh",
                "-c",
                f"{setup} && exec sleep infinity",
            ]
        )
        self.holders[name] = holder
        deadline = time.time() + 10
        while time.time() < deadline:
            if ready.exists():
                return
            if holder.poll() is not None:
                raise RuntimeError(f"could not set up the namespaces of {name} (exit {holder.returncode})")
            time.sleep(0.05)
        raise RuntimeError(f"the namespaces of {name} were not ready after 10 s")

    def inside(self, name: str, command: list[str]) -> list[str]:
        """`command` run in the namespaces of machine `name` (a node, or "lab")."""
        holder = self.holders[name]
        return ["nsenter", f"--target={holder.pid}", "--net", "--uts", "--mount", "--", *command]

    def start_node(self, node: str) -> None:
        """Start (or restart) one node's slurmd in its namespaces."""
        self._hold(node, self.namespaces[node], node)
        command = self.inside(node, ["slurmd", "-f", str(self.conf)])
        subprocess.run(command, check=True, env=self.env)

    def start(self) -> None:
        """Namespaces and network, munged, slurmctld in the lab, a slurmd per node; wait for both idle."""
        self.write_conf()
        self.make_network()
        self.start_munge()
        self._hold("lab", self.lab, None)
        subprocess.run(self.inside("lab", ["slurmctld", "-f", str(self.conf)]), check=True, env=self.env)
        for node in self.nodes:
            self.start_node(node)
        self.wait_idle(len(self.nodes))

    def kill_node(self, node: str) -> list[int]:
        """A node dies: SIGKILL to every process in its network namespace (slurmd, job steps, ranks)."""
        pids = [
            int(p)
            for p in subprocess.run(
                ["ip", "netns", "pids", self.namespaces[node]], capture_output=True, text=True
            ).stdout.split()
        ]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        holder = self.holders.pop(node, None)
        if holder is not None:
            holder.kill()
            holder.wait()
        return pids

    def daemon_pid_files(self) -> list[Path]:
        return [self.base / "slurmctld.pid", *(self.base / f"slurmd-{node}.pid" for node in self.nodes)]

    def start_ssh(self) -> Path:
        """An sshd on each node (its address only, a key made for this cluster) for `mpiexec` without Slurm;
        returns the ssh command to give MPICH's mpiexec (`-launcher-exec`). Installs openssh-server if needed."""
        if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server"],
                capture_output=True,
                env=env,
                timeout=900,
                check=True,
            )
        ssh = self.base / "ssh"
        ssh.mkdir(exist_ok=True)
        for key in ("host_key", "client_key"):
            if not (ssh / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / key)], check=True)
        shutil.copy(ssh / "client_key.pub", ssh / "authorized_keys")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        client = ssh / "ssh"
        options = "-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        client.write_text(f'#!/bin/sh\nexec ssh {options} -o BatchMode=yes -i {ssh / "client_key"} "$@"\n')
        client.chmod(0o755)
        for node in self.nodes:
            config = ssh / f"sshd-{node}.conf"
            config.write_text(
                f"ListenAddress {self.addresses[node]}\nHostKey {ssh / 'host_key'}\nPidFile {ssh}/sshd-{node}.pid\n"
                f"AuthorizedKeysFile {ssh / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
            )
            subprocess.run(self.inside(node, ["/usr/sbin/sshd", "-f", str(config)]), check=True)
        return client

    def on_node(self, node: str, command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a command on a node, as a user logged into it would (its hostname, address and hosts file)."""
        return subprocess.run(
            self.inside(node, command),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def stop(self) -> None:
        """Shut Slurm down, then remove the namespaces (anything still in them is killed first)."""
        self.run(["scontrol", "shutdown"], check=False)
        for pid_file in self.daemon_pid_files():
            _wait_gone(pid_file)
        for pid_file in (self.base / "ssh").glob("sshd-*.pid"):
            subprocess.run(["kill", pid_file.read_text().strip()], check=False, capture_output=True)
            _wait_gone(pid_file)
        for node in self.nodes:
            self.kill_node(node)
        for holder in self.holders.values():  # the lab's (the nodes' went with kill_node)
            holder.kill()
            holder.wait()
        self.holders = {}
        for ns in (*self.namespaces.values(), self.lab):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.stop_munge()

    def run(self, command: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a Slurm client command in the lab namespace (the cluster's login node)."""
        return super().run(self.inside("lab", command), check=check, **kwargs)


def _munge_answers() -> bool:
    """Whether munged makes a credential (the check Slurm's own authentication depends on)."""
    try:
        return subprocess.run(["munge", "-n"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a zombie answers signal 0 but runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _live_processes(name: str) -> list[int]:
    """The pids of running (not zombie) processes called `name`."""
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if _alive(int(pid))]


def _wait_gone(pid_file: Path, timeout: float = 30) -> None:
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().split()[0])
    except (ValueError, IndexError):
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)

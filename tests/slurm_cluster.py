"""A real one-node Slurm cluster for tests (Debian's slurm-wlm + munge), started as root without systemd.

`SlurmCluster.start()` installs the packages if they are missing (apt-get, as root), writes a slurm.conf under a
temporary directory, starts munged, slurmctld and slurmd, and waits for the node to be idle; `stop()` shuts the
daemons down by their pid files. `unavailable()` says why a cluster cannot be had here (tests then skip).
"""

from __future__ import annotations

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

    def write_conf(self) -> None:
        b = self.base
        for d in ("state", "spool", "log"):
            (b / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
ClusterName=lrun-test
SlurmctldHost={self.host}(127.0.0.1)
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
SlurmdSpoolDir={b / "spool"}
SlurmctldPidFile={b / "slurmctld.pid"}
SlurmdPidFile={b / "slurmd.pid"}
SlurmctldLogFile={b / "log" / "slurmctld.log"}
SlurmdLogFile={b / "log" / "slurmd.log"}
JobCompType=jobcomp/filetxt
JobCompLoc={b / "log" / "jobcomp.log"}
NodeName={self.host} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> None:
        """Start munged (if not running), slurmctld and slurmd; wait until the node is idle."""
        self.write_conf()
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        self.munge_pid = run_dir / "munged.pid"
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
            self.started_munge = True
        else:
            self.started_munge = False
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=self.env)
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True, env=self.env)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = self.run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm node not idle after 60 s (state {state!r}); see {self.base / 'log'}")

    def stop(self) -> None:
        """scontrol shutdown, wait for the daemons' pid files' processes, stop munged if we started it."""
        self.run(["scontrol", "shutdown"], check=False)
        for pid_file in (self.base / "slurmctld.pid", self.base / "slurmd.pid"):
            _wait_gone(pid_file)
        if getattr(self, "started_munge", False) and self.munge_pid.exists():
            pid = int(self.munge_pid.read_text().split()[0])
            subprocess.run(["kill", str(pid)], check=False)
            _wait_gone(self.munge_pid)

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


def _wait_gone(pid_file: Path, timeout: float = 30) -> None:
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().split()[0])
    except (ValueError, IndexError):
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, 9)

"""The workflow through ``profiles/slurm`` on a real SLURM scheduler.

A fixture starts a one-node cluster on this machine (munged, MariaDB, slurmdbd,
slurmctld, slurmd; Debian's SLURM 22.05, installed by ``.ci/install_slurm.sh``) and stops
every daemon it started, by process id. It needs root and the binaries: without them the
tests skip, unless ``CLEMALIGN_REQUIRE_SLURM=1`` (CI sets it), when they fail instead.

The cluster's configuration goes where SLURM's clients look for it,
``/etc/slurm/slurm.conf`` (the job step that the executor plugin starts inside each job
drops ``SLURM_CONF`` from its environment), and is removed again at the end; a machine
with a SLURM configuration of its own is left alone (the tests skip). Accounting is real
(slurmdbd on a throwaway MariaDB), so the plugin's default status command ``sacct``
works and the tests can read each job's final state from it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, TINY, snakemake

from clemalign.io import write_landmarks
from clemalign.phantom import make_analogy_case

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

REQUIRE = os.environ.get("CLEMALIGN_REQUIRE_SLURM", "") not in ("", "0")
CONF_DIR = Path("/etc/slurm")
MARKER = "# Written by clemalign's tests/test_slurm.py: a throwaway one-node test cluster."
CLUSTER = "clemalign"
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("munge", "unmunge", "sbatch", "srun", "squeue", "scancel", "sacct", "sacctmgr", "sinfo")
SBIN = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))
# The profile plus what only a test wants: status checks every few seconds instead of
# 20 s (the tiny jobs take seconds), and the SLURM logs of successful jobs kept.
SLURM_ARGS = (
    "--profile",
    str(REPO / "profiles" / "slurm"),
    "--workflow-profile",
    "none",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--slurm-keep-successful-logs",
)


def _unavailable(reason: str):
    if REQUIRE:
        pytest.fail(f"CLEMALIGN_REQUIRE_SLURM is set, but {reason}", pytrace=False)
    pytest.skip(reason)


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + SBIN)


def _running(names: tuple[str, ...]) -> list[str]:
    """Processes of this machine whose command name is one of ``names``."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            name = comm.read_text().strip()
            if name in names:
                found.append(f"{name} (pid {comm.parent.name})")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _ours(path: Path) -> bool:
    with contextlib.suppress(OSError):
        return path.read_text().startswith(MARKER)
    return False


def _prerequisites() -> dict[str, str]:
    """Paths of the programs the cluster needs, or skip (fail under REQUIRE) saying why."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        _unavailable("the SLURM executor plugin is missing: pip install -e '.[cluster]'")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _unavailable("starting a SLURM cluster needs root (munged, slurmd, slurmctld)")
    paths = {name: _which(name) for name in DAEMONS + CLIENTS}
    missing = sorted(name for name, path in paths.items() if path is None)
    if missing:
        _unavailable(
            f"SLURM binaries missing ({', '.join(missing)}); on Debian/Ubuntu run "
            ".ci/install_slurm.sh (slurmctld slurmd slurmdbd slurm-client munge mariadb-server)"
        )
    try:
        pwd.getpwnam("munge")
    except KeyError:
        _unavailable("there is no 'munge' user (the munge package creates it)")
    if not Path("/etc/munge/munge.key").is_file():
        _unavailable("/etc/munge/munge.key is missing (the munge package creates it)")
    for conf in (CONF_DIR / "slurm.conf", CONF_DIR / "slurmdbd.conf"):
        if conf.exists() and not _ours(conf):
            _unavailable(f"this machine has a SLURM configuration of its own ({conf})")
    busy = _running(("slurmctld", "slurmd", "slurmdbd"))
    if busy:
        _unavailable(
            f"SLURM daemons already run here: {', '.join(busy)} (left by a test run that was "
            "killed before its teardown? then stop them by these process ids)"
        )
    return paths


@dataclass
class Cluster:
    """A one-node SLURM cluster whose daemons this test session started."""

    base: Path
    bin: dict[str, str]
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)

    def _spawn(self, name: str, args: list[str], **kwargs) -> subprocess.Popen:
        log = self.base / f"{name}.out"
        self.logs.setdefault(name, log)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [self.bin[name], *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )
        self.procs.append((name, proc))
        return proc

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ready():
                return
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        text = []
        for log in self.logs.values():
            with contextlib.suppress(OSError):
                last = log.read_text(errors="replace").splitlines()[-lines:]
                text.append(f"--- {log}\n" + "\n".join(last))
        return "\n".join(text)

    def run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [self.bin.get(args[0]) or args[0], *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr}\n{self.tail()}")
        return result.stdout

    def munge_works(self) -> bool:
        token = subprocess.run([self.bin["munge"], "-n"], capture_output=True, timeout=10)
        if token.returncode != 0:
            return False
        check = subprocess.run(
            [self.bin["unmunge"]], input=token.stdout, capture_output=True, timeout=10
        )
        return check.returncode == 0

    def start(self) -> None:
        # munge: the default socket, which the SLURM daemons and clients use; a munged
        # that already answers there (the system's) is used as it is.
        if not self.munge_works():
            munge = pwd.getpwnam("munge")
            run = Path("/run/munge")
            run.mkdir(mode=0o755, exist_ok=True)
            os.chown(run, munge.pw_uid, munge.pw_gid)
            self._spawn("munged", ["--foreground", "--force"], user="munge", group="munge")
            self._wait("munged", self.munge_works, 20)
        # accounting: a throwaway MariaDB (its tables made by slurmdbd) and slurmdbd
        ports = {name: _free_port() for name in ("db", "dbd", "ctld", "d")}
        datadir = self.base / "mysql"
        datadir.mkdir()
        self._spawn(
            "mariadbd",
            [
                "--no-defaults",
                f"--datadir={datadir}",
                "--user=root",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--bind-address=127.0.0.1",
                f"--port={ports['db']}",
                f"--socket={self.base / 'mysql.sock'}",
                f"--pid-file={self.base / 'mysql.pid'}",
                "--innodb-buffer-pool-size=128M",
                "--innodb-log-file-size=16M",
                "--innodb-lock-wait-timeout=900",
            ],
        )
        self._wait("mariadbd", lambda: _port_open(ports["db"]))
        self.write_config(ports)
        self._spawn("slurmdbd", ["-D"])
        self._wait("slurmdbd", lambda: _port_open(ports["dbd"]))
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
        self._spawn("slurmctld", ["-D", "-i"])
        self._spawn("slurmd", ["-D"])
        self._wait("the node", lambda: self.run("sinfo", "-h", "-o", "%T", check=False) == "idle\n")

    def write_config(self, ports: dict[str, int]) -> None:
        host = socket.gethostname().split(".")[0]
        # this node as slurmd sees it, claiming at least 16 GB: the profile asks up to
        # 8 GB per job (for the full-size data) and two such jobs must fit; the tiny
        # config needs far less. config_overrides makes slurmd accept the claim.
        node = self.run("slurmd", "-C").splitlines()[0]
        memory = int(re.search(r"RealMemory=(\d+)", node).group(1))
        node = re.sub(r"RealMemory=\d+", f"RealMemory={max(memory, 16000)}", node)
        for sub in ("ctld", "slurmd"):
            (self.base / sub).mkdir()
        CONF_DIR.mkdir(exist_ok=True)
        slurm_conf = CONF_DIR / "slurm.conf"
        slurm_conf.write_text(
            f"""{MARKER}
# State and logs: {self.base}
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports["ctld"]}
SlurmdPort={ports["d"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={self.base / "ctld"}
SlurmdSpoolDir={self.base / "slurmd"}
SlurmctldPidFile={self.base / "slurmctld.pid"}
SlurmdPidFile={self.base / "slurmd.pid"}
SlurmctldLogFile={self.base / "slurmctld.log"}
SlurmdLogFile={self.base / "slurmd.log"}
# no cgroups here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# finished jobs stay in squeue for 10 minutes as well
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports["dbd"]}
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        dbd_conf = CONF_DIR / "slurmdbd.conf"
        dbd_conf.touch(mode=0o600)
        dbd_conf.chmod(0o600)  # slurmdbd refuses a configuration others can read
        dbd_conf.write_text(
            f"""{MARKER}
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["dbd"]}
SlurmUser=root
LogFile={self.base / "slurmdbd.log"}
PidFile={self.base / "slurmdbd.pid"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["db"]}
StorageUser=root
StorageLoc=slurm_acct_db
"""
        )
        for name in ("slurmctld", "slurmd", "slurmdbd"):
            self.logs[name] = self.base / f"{name}.log"

    def stop(self) -> None:
        """Cancel what is left on the cluster, stop our daemons, remove our configuration."""
        if any(name == "slurmctld" and proc.poll() is None for name, proc in self.procs):
            with contextlib.suppress(Exception):
                jobs = self.run("squeue", "-h", "-o", "%i", check=False).split()
                if jobs:
                    self.run("scancel", *jobs, check=False)
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        for conf in (CONF_DIR / "slurm.conf", CONF_DIR / "slurmdbd.conf"):
            if _ours(conf):
                conf.unlink()

    def sacct(self, jobname: str) -> list[dict[str, str]]:
        """One row per job of ``jobname`` from SLURM's accounting (allocations only)."""
        fields = ("JobIDRaw", "JobName", "State", "ExitCode", "NodeList", "Comment")
        out = self.run(
            "sacct",
            "-X",
            "--parsable2",
            "--noheader",
            "--starttime",
            "now-1days",
            "--name",
            jobname,
            "--format",
            ",".join(fields),
        )
        return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    paths = _prerequisites()
    started = Cluster(tmp_path_factory.mktemp("slurm"), paths)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def _cluster_config() -> str:
    """The tiny config with fewer and cheaper jobs (each SLURM job also starts Snakemake
    twice, and the status polls add seconds): the fast 2D phantom, only the TEM itself
    registered, one capture-range protocol with one trial. Every rule still runs."""
    config = yaml.safe_load(TINY)
    config["synthetic"]["analogy"]["model"] = "simple"
    registration = config["registration"]
    registration["sources"] = ["raw"]
    registration["capture_range"]["trials"] = 1
    registration["capture_range"]["protocols"] = registration["capture_range"]["protocols"][:1]
    return yaml.safe_dump(config, sort_keys=False)


CLUSTER_CONFIG = _cluster_config()


def _slurm_run(workdir: Path, *args: str, config: str) -> tuple[subprocess.CompletedProcess, str]:
    """The workflow through the SLURM profile: the result and all its output."""
    result = snakemake(workdir, *SLURM_ARGS, *args, config=config, timeout=1200)
    return result, result.stdout + result.stderr


def _submitted(text: str) -> tuple[str, dict[str, str]]:
    """The run's SLURM job name and its SLURM job id -> log file, from Snakemake's output."""
    name = re.search(r"SLURM run ID: (\S+)", text)
    assert name, text[-3000:]
    jobs = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.?$", text, re.M))
    return name.group(1), jobs


#: Rules that run where Snakemake runs, not as SLURM jobs (workflow ``localrule``).
LOCAL_RULES = ("all", "check_case")


def _finished(text: str) -> Counter:
    """Jobs per rule that Snakemake reports finished (its 'Job stats' table lists only the
    jobs known before the case checks, a checkpoint, add the rest), local rules apart."""
    counts = Counter(re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)", text, re.M))
    for rule in LOCAL_RULES:
        counts.pop(rule, None)
    return counts


def _rule(comment: str) -> str:
    """The rule named in the plugin's job comment ``rule_<rule>[_wildcards_<values>]``."""
    match = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)
    assert match, comment
    return match.group(1)


def _report(rows: list[dict[str, str]]) -> None:
    print("sacct:", *(" ".join(row.values()) for row in rows), sep="\n  ")


def test_every_job_runs_on_slurm_and_the_tables_match_a_local_run(cluster, tmp_path):
    """Each job Snakemake ran (the case checks apart: a local rule) is a SLURM job that
    COMPLETED (SLURM's accounting), and the tables are byte for byte those of the same
    config run locally."""
    # the same config locally meanwhile, on one core (the cluster's jobs use the others)
    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(
            snakemake, tmp_path / "local", "--cores", "1", config=CLUSTER_CONFIG, timeout=1200
        )
        result, text = _slurm_run(tmp_path / "slurm", config=CLUSTER_CONFIG)
        local = local.result()
    assert result.returncode == 0, text[-5000:]
    assert local.returncode == 0, local.stderr[-5000:]

    jobname, submitted = _submitted(text)
    planned = _finished(text)
    rows = cluster.sacct(jobname)
    _report(rows)
    assert jobname.startswith("clemalign_")  # the profile's prefix
    assert {row["JobIDRaw"] for row in rows} == set(submitted)
    assert all(row["State"] == "COMPLETED" and row["ExitCode"] == "0:0" for row in rows), rows
    assert Counter(_rule(row["Comment"]) for row in rows) == planned
    assert sum(planned.values()) == len(rows)
    assert {"learn_dictionary", "predict_sparse", "capture_range", "table1", "table2"} <= set(
        planned
    )
    # the SLURM log of each job: the job step ran the rule there
    for row in rows:
        log = Path(submitted[row["JobIDRaw"]])
        assert log.is_file() and f"rule {_rule(row['Comment'])}:" in log.read_text(), log

    tables = {}
    for run in ("slurm", "local"):
        folder = tmp_path / run / "out" / "tables"
        tables[run] = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert len(tables["local"]) >= 10
    assert tables["slurm"].keys() == tables["local"].keys()
    for name, data in tables["local"].items():
        assert tables["slurm"][name] == data, name
    print(f"tables identical byte for byte: {', '.join(tables['local'])}")


def _write_case(folder: Path, in_pixels: bool) -> dict[str, str]:
    case = make_analogy_case(
        5, 0, {"tem_px_per_um": 30.0, "tem_field_um": [8.0, 8.0], "confocal_field_um": [20.0, 20.0]}
    )
    paths = case.write(str(folder))
    if in_pixels:  # landmarks given in pixels by mistake: preprocessing refuses them
        table = case.landmarks.copy()
        table[["em_x_um", "em_y_um"]] *= case.em_px_per_um
        table[["lm_x_um", "lm_y_um"]] *= case.lm_px_per_um
        write_landmarks(paths["landmarks"], table)
    return paths


def test_failed_job_is_reported_with_its_slurm_log_and_the_others_finish(cluster, tmp_path):
    rows = ["case\ttrack\tem\tlm\tlandmarks"]
    for name in ("good", "bad"):
        p = _write_case(tmp_path / name, in_pixels=name == "bad")
        rows.append(f"{name}\tanalogy\t{p['em']}\t{p['lm']}\t{p['landmarks']}")
    sheet = tmp_path / "cases.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    config = f"data: {{source: sheet, case_sheet: {sheet}}}\n"
    config += "analogy: {allow_fewer_training_cases: true}\n"  # two cases, trained on one
    # the bad case's preprocessing fails; the good case's figure comes after its own
    targets = ("results/figures/cases/good.png", "results/preprocessed/bad/em.tif")
    result, text = _slurm_run(tmp_path / "wd", *targets, config=config)
    assert result.returncode != 0, text[-5000:]

    jobname, submitted = _submitted(text)
    rows = {row["Comment"]: row for row in cluster.sacct(jobname)}
    _report(list(rows.values()))
    assert {row["JobIDRaw"] for row in rows.values()} == set(submitted)
    bad = rows["rule_preprocess_analogy_wildcards_bad"]
    assert bad["State"] == "FAILED", bad
    for comment in ("rule_preprocess_analogy_wildcards_good", "rule_figure_case_wildcards_good"):
        assert rows[comment]["State"] == "COMPLETED", rows[comment]
    assert (tmp_path / "wd/results/figures/cases/good.png").is_file()

    # Snakemake names the failed SLURM job and its log, which holds the job's own report
    log = submitted[bad["JobIDRaw"]]
    assert log == str(
        tmp_path / "wd/.snakemake/slurm_logs/rule_preprocess_analogy/bad" / f"{bad['JobIDRaw']}.log"
    )
    error = text[text.index("Error in rule preprocess_analogy") :]
    assert f"SLURM-job '{bad['JobIDRaw']}' failed" in error, error[:3000]
    assert log in error.split("Error in rule", 2)[1], error[:3000]
    assert "um, not pixels" in text  # show-failed-logs: the rule's own log
    job_log = Path(log).read_text()
    assert "Error in rule preprocess_analogy" in job_log and "bad" in job_log, job_log[-3000:]
    print(f"failed job {bad['JobIDRaw']} reported with its SLURM log {log}")

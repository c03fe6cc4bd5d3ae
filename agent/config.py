"""The agent's settings: the same keys as flags and in its TOML file.

Kept apart from the daemon so that reading a config imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AgentConfig:
    scheduler: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""
    pki_dir: str = ""
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    slots: int = 0  # 0: one per CPU core
    state_dir: str = "/var/lib/outrider-agent"
    ntp_servers: list[str] = field(default_factory=list)
    kill_grace: float = 5.0
    log_level: str = "info"
    log_format: str = "auto"  # auto (json unless stderr is a terminal), json or text (outrider.logfmt)
    # Data-residency zones this agent sits in (it may process data tagged with them).
    zones: list[str] = field(default_factory=list)
    # Bytes of the start-up bandwidth probe against the scheduler; 0: no probe.
    bandwidth_probe_bytes: int = 4 << 20
    # Bound on the artifact cache (state_dir/cache); least recently used blobs go first; 0: no bound.
    cache_max_bytes: int = 10 << 30
    # Ceiling on what one directory artifact (an input, a checkpoint) may expand to in a work
    # dir, and on what the symlinks in a directory output may add to it; 0: no ceiling.
    max_extract_bytes: int = 10 << 30
    # Draining (first SIGTERM, `outrider drain`, a preemption notice): how long a stage has,
    # after its SIGTERM, to save a checkpoint and exit before it is killed.
    drain_grace: float = 60.0
    # A file whose appearance means this machine is about to be taken away (a spot
    # instance's preemption notice): the agent drains. Empty: none.
    preemption_file: str = ""
    # Run stages as this user (a name or a uid) and group (default: the user's own), so a
    # stage cannot read the agent's key or state; empty: as the agent's own user.
    stage_user: str = ""
    stage_group: str = ""
    # Where stages run: "local" (processes the keeper starts) or "slurm" (Slurm jobs, agent.slurm).
    executor: str = "local"
    # With executor = "slurm": the partition and account jobs go to, the directory shared
    # by the login node and the compute nodes (the stages' work dirs), extra sbatch arguments.
    slurm_partition: str = ""
    slurm_account: str = ""
    slurm_work_dir: str = ""
    slurm_extra_args: list[str] = field(default_factory=list)

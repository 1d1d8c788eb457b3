"""Studies: sweeps of one job over points, shared by `python -m ddc_hpc.scaling` and `python -m ddc_hpc.frontier`.

A point is one ddc_hpc.run of the study's job (--config and --set) with overrides of its own, in its own
out dir DIR/<point> (rank or node counts, budgets x seeds). `local` runs the points one after another under
an MPI launcher on this machine; `submit` sbatches one requeueable job per point (a job array when the
points need the same nodes and the template launches through slurm/launch.sh), then a collect job that
runs after all of them (`--dependency=afterany:...`); `collect` (each study's own) tabulates what finished.

A study dir records its definition in DIR/<tool>.json. Running `local` or `submit` again with the same
--out and the same definition continues the study: a finished point (results.json) is not run again and a
stopped one resumes from its checkpoints; a dir made by another definition is refused (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import BadInput
from .files import atomic_write

# what defines a study: a dir recorded with other values here belongs to another study
DEFINITION = ("kind", "config", "sets", "points")
ARGS_FILE = "array.args"  # a job array's points, one shell-quoted `JOB OUT [run args]` line per task


class UsageError(BadInput):
    """Bad arguments to a study: exit 2 with the message."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the study's job: its folder under the study dir, its own --set overrides (after the
    study's), its rank count (local) and node count (submit), and what it stands for (recorded)."""

    name: str
    sets: tuple[str, ...] = ()
    ranks: int = 1
    nodes: int = 1
    info: dict = dataclasses.field(default_factory=dict)

    def record(self) -> dict:
        return {"dir": self.name, "sets": list(self.sets), "ranks": self.ranks, "nodes": self.nodes, **self.info}


def check_config(config: str | None, sets: list[str]):
    """The job config with the overrides, validated here before anything is launched (UsageError)."""
    from .config import load_config

    if config is not None and not Path(config).is_file():
        raise UsageError(f"--config {config}: no such file")
    try:
        return load_config(config, sets)
    except BadInput as err:
        raise UsageError(str(err)) from None


def count(text: str) -> int:
    """A rank or node count on the command line (argparse type): a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def counts(values: list[int], what: str) -> list[int]:
    """Rank or node counts (each a `count`): each once, ascending."""
    if len(set(values)) != len(values):
        raise UsageError(f"{what} lists a count twice: {values}")
    return sorted(values)


def finished(run_dir: Path) -> bool:
    return (run_dir / "results.json").exists()


def _python() -> str:
    """The interpreter running this tool runs the study too (the same venv on a cluster's shared disk)."""
    return sys.executable


def manifest_path(root: Path, tool: str) -> Path:
    return Path(root) / f"{tool}.json"


def write_manifest(root: Path, tool: str, manifest: dict) -> None:
    atomic_write(manifest_path(root, tool), (json.dumps(manifest, indent=1) + "\n").encode())


def prepare(root: Path, tool: str, definition: dict, points: list[Point]) -> dict:
    """The study dir's manifest to run `points` into: a new one, or the dir's own when it records the
    same definition (a continued study); UsageError for a dir used otherwise."""
    definition = definition | {"points": [p.record() for p in points]}
    path = manifest_path(root, tool)
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UsageError(f"{path} is unreadable ({err}): choose a new --out") from None
        differ = [k for k in DEFINITION if recorded.get(k) != definition.get(k)]
        if differ:
            raise UsageError(f"{root} holds another study ({path.name} records other {', '.join(differ)}): run the "
                             "same command to continue it, or choose a new --out")
        return recorded | {"runs": recorded.get("runs", [])}
    used = [p.name for p in points if (root / p.name).is_dir() and any((root / p.name).iterdir())]
    if used:
        raise UsageError(f"{root / used[0]} is not empty and {root} records no study ({path.name}): a study "
                         "starts in a fresh --out")
    root.mkdir(parents=True, exist_ok=True)
    return definition | {"runs": []}


def _run_command(point: Point, config: str | None, sets: list[str]) -> list[str]:
    """`[--config JOB] --set ...`: one point's ddc_hpc.run arguments beside its --out."""
    return ((["--config", config] if config else []) +
            [a for override in (*sets, *point.sets) for a in ("--set", override)])


def resolve_launcher(launcher: str) -> list[str]:
    """The launcher's words; its program found on PATH or beside this interpreter (an un-activated venv)."""
    words = shlex.split(launcher)
    if not words or not any("{ranks}" in part for part in words):
        raise UsageError(f"--launcher {launcher!r} must contain {{ranks}}, e.g. 'mpiexec -n {{ranks}}'")
    beside = Path(_python()).parent / words[0]
    if shutil.which(words[0]) is None and "/" not in words[0] and beside.is_file():
        words[0] = str(beside)
    elif shutil.which(words[0]) is None:
        raise UsageError(f"--launcher: {words[0]} is not on PATH (activate the venv, or load the MPI module)")
    return words


def run_local(root: Path, tool: str, manifest: dict, points: list[Point], *, config: str | None,
              sets: list[str], launcher: list[str]) -> list[str]:
    """Run every unfinished point under the launcher, one after another (a stopped one resumes from its
    checkpoints); the manifest records each exit code. Returns the names of the points that failed."""
    failed = []
    for point in points:
        run_dir = root / point.name
        if finished(run_dir):
            print(f"{tool}: {point.name} finished; not run again", flush=True)
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        command = ([part.format(ranks=point.ranks) for part in launcher]
                   + [_python(), "-m", "ddc_hpc.run", "--out", str(run_dir), *_run_command(point, config, sets)])
        print(f"{tool}: {point.name}: {shlex.join(command)}", flush=True)
        with open(run_dir / "launch.log", "a") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        manifest["runs"].append({"dir": point.name, "ranks": point.ranks, "nodes": point.nodes, "returncode": code})
        write_manifest(root, tool, manifest)
        if code != 0:
            failed.append(point.name)
            print(f"{tool}: {point.name} failed with exit {code} (run the same command again to resume it); "
                  f"see {run_dir / 'launch.log'}", file=sys.stderr)
    return failed


def parse_job_id(output: str) -> str:
    job_id = output.strip().splitlines()[-1].split(";")[0].strip() if output.strip() else ""
    if not job_id.isdigit():
        raise RuntimeError(f"sbatch --parsable printed {output!r}, not a job id")
    return job_id


def takes_array(template: str) -> bool:
    """Whether the template can run a job array's points: it launches through slurm/launch.sh, which
    reads task i's arguments from $DDC_STUDY_ARGS."""
    return "slurm/launch.sh" in Path(template).read_text()


def submit(root: Path, tool: str, manifest: dict, points: list[Point], *, template: str, config: str,
           sets: list[str], sbatch_args: list[str], collect: list[str] | None, dry_run: bool) -> int:
    """sbatch every unfinished point (one array when they need the same nodes and the template takes
    one, else one job each), then `collect` (argv) after all of them. Exit code: 0, or 1 if sbatch failed."""
    if not dry_run and shutil.which("sbatch") is None:
        raise UsageError("sbatch is not on PATH: submit runs on a SLURM login node (or use `local`)")
    todo = [p for p in points if not finished(root / p.name)]
    submitted: list[str] = []

    def sbatch(command: list[str]) -> str:
        print(shlex.join(command), flush=True)
        if dry_run:
            submitted.append(str(1000 + len(submitted)))
            return submitted[-1]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch failed (exit {done.returncode}): {done.stderr.strip()}")
        submitted.append(parse_job_id(done.stdout))
        return submitted[-1]

    try:
        for point in todo:
            (root / point.name).mkdir(parents=True, exist_ok=True)  # SLURM does not create the log's folder
        if len(todo) > 1 and len({p.nodes for p in todo}) == 1 and takes_array(template):
            lines = [shlex.join([config, str(root / p.name), *_run_command(p, None, sets)]) for p in todo]
            args_file = root / ARGS_FILE
            atomic_write(args_file, ("\n".join(lines) + "\n").encode())
            print("\n".join(f"  task {i}: {line}" for i, line in enumerate(lines)))
            array = sbatch(["sbatch", "--parsable", f"--nodes={todo[0].nodes}", f"--job-name=ddc-{tool}",
                            f"--array=0-{len(todo) - 1}", f"--output={root}/slurm-%A_%a.out",
                            f"--export=ALL,DDC_STUDY_ARGS={args_file.resolve()}", *sbatch_args, template])
            jobs = [array]
            manifest["runs"] += [{"dir": p.name, "nodes": p.nodes, "job_id": f"{array}_{i}"} for i, p in enumerate(todo)]
        else:
            jobs = []
            for point in todo:
                jobs.append(sbatch(["sbatch", "--parsable", f"--nodes={point.nodes}",
                                    f"--job-name=ddc-{tool}-{point.name}", f"--output={root / point.name}/slurm-%j.out",
                                    *sbatch_args, template, config, str(root / point.name),
                                    *_run_command(point, None, sets)]))
                manifest["runs"].append({"dir": point.name, "nodes": point.nodes, "job_id": jobs[-1]})
                write_manifest(root, tool, manifest)
        write_manifest(root, tool, manifest)
        if collect is not None:
            after = [f"--dependency=afterany:{':'.join(jobs)}"] if jobs else []
            manifest["collect_job_id"] = sbatch(
                ["sbatch", "--parsable", *after, f"--job-name=ddc-{tool}-collect", *sbatch_args, "--nodes=1",
                 "--ntasks=1", "--cpus-per-task=1", f"--output={root}/collect-%j.out", f"--wrap={shlex.join(collect)}"])
            write_manifest(root, tool, manifest)
    except RuntimeError as err:
        print(f"{tool}: {err}", file=sys.stderr)
        if submitted:
            print(f"{tool}: jobs already submitted: {' '.join(submitted)} (scancel them if needed)", file=sys.stderr)
        return 1
    if dry_run:
        print(f"{tool}: dry run, nothing submitted")
    else:
        print(f"{tool}: submitted {' '.join(submitted)} ({len(todo)} point(s); {len(points) - len(todo)} finished)"
              + (f"; collect job {manifest['collect_job_id']}" if collect is not None else ""))
    return 0


def collect_command(tool: str, *args: str) -> list[str]:
    """The collect job's command line: this interpreter, `-m ddc_hpc.<tool> collect ARGS`."""
    return [_python(), "-m", f"ddc_hpc.{tool}", "collect", *args]


# ---- the command lines' shared parts ----------------------------------------------------------------

def parser(tool: str, doc: str, epilog: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """`python -m ddc_hpc.<tool>` and its subcommands."""
    top = argparse.ArgumentParser(prog=f"python -m ddc_hpc.{tool}", description=doc.split("\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
    return top, top.add_subparsers(dest="command", required=True)


def _template(path: str) -> str:
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such file (e.g. slurm/cpu.sbatch)")
    return path


def launcher_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", default="mpiexec -n {ranks}",
                   help="command that starts {ranks} MPI ranks (default: %(default)r)")


def submit_args(p: argparse.ArgumentParser) -> None:
    """submit's options: the template, extra sbatch options, no collect job, a dry run."""
    p.add_argument("--template", required=True, type=_template, help="sbatch template, e.g. slurm/cpu.sbatch")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch option for every job, e.g. --sbatch-arg=--account=me (repeatable)")
    p.add_argument("--no-collect", action="store_true", help="do not submit the collect job")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch commands, submit nothing")

"""Every command in the README's bash blocks runs as written (the "Scaling out" block has its own test in
test_scale_out.py, with real servers).

The commands run in a copy of the project (experiments/ and an empty store), in README order, with
``HARNESS_MAX_STEPS=2`` so that every training command is a two-step smoke run. A placeholder such as ``<run_id>``
is replaced by a real id from the store at that point. Lines that are not harness commands are skipped only for the
reasons in SKIP; a command that is expected to stop with exit 2 (a missing optional package) is in EXPECTED_EXIT.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)

# Lines the suite does not run, and why.
SKIP = {
    "pip": "installing: CI runs the Quick start's install command itself (.ci/run)",
    "python -m pytest": "this test suite",
    "torchrun": "DDP: tests/test_ddp.py runs it with real processes",
    "initdb": "Scaling out: test_scale_out.py runs that block with real servers",
    "pg_ctl": "Scaling out: see above",
    "psql": "Scaling out: see above",
    "mlflow server": "Scaling out: see above",
    "export MLFLOW_TRACKING_URI": "Scaling out: see above",
}
# Commands that stop with exit 2 on purpose in this environment, and the message that says why.
EXPECTED_EXIT = {
    "harness dashboard": (2, "optuna-dashboard is not installed"),
}
SERVERS = ("harness ui", "mlflow ui")  # they run until Ctrl-C: started, checked, stopped


def _commands() -> list[tuple[int, str]]:
    """(block number, command) for every command line of every bash block, continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for n, block in enumerate(BASH_BLOCK.findall(text)):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            for part in line.split(" && "):  # the quick start's install && run: each part on its own
                part = re.sub(r"<([^<>]+)>", lambda m: "<" + m.group(1).replace(" ", "_") + ">", part)  # one word per placeholder
                words = shlex.split(part, comments=True)
                if words:
                    out.append((n, shlex.join(words)))
    return out


def _skip_reason(command: str) -> str | None:
    if "--storage postgresql://" in command:
        return "Scaling out: test_scale_out.py runs that block with real servers"
    for prefix, reason in SKIP.items():
        if command.startswith(prefix):
            return reason
    return None


def test_the_readme_commands_are_covered():
    """Every command is run here or skipped for a stated reason; the skipped ones stay few."""
    commands = [c for _, c in _commands()]
    assert any(c.startswith("harness run experiments/lr_sweep.yaml") for c in commands)
    skipped = [c for c in commands if _skip_reason(c)]
    unknown = [c for c in commands if not _skip_reason(c) and not c.startswith(("harness", "python -m harness", "mlflow ui"))]
    assert not unknown, f"README commands this test does not know how to run: {unknown}"
    assert len(skipped) <= 12, skipped


class _Project:
    """A copy of the project's specs with an empty store, where README commands run one after another."""

    def __init__(self, root: Path):
        self.dir = root / "project"
        shutil.copytree(ROOT / "experiments", self.dir / "experiments")
        (self.dir / "mlruns").mkdir(parents=True)
        (self.dir / "studies").mkdir()
        self.text = self.dir / "my_text.txt"  # the user's own file of the "Your own data" walk-through
        self.text.write_text("Some text of the reader's own, long enough for a few windows of 64 characters.\n" * 40, encoding="utf-8")
        self.env = child_env(HARNESS_MAX_STEPS="2")
        self.env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store, as a user's shell has it

    def client(self):
        from harness.tracking import client_for

        return client_for(f"sqlite:///{self.dir / 'mlruns' / 'mlflow.db'}")

    def ids(self) -> dict[str, list[str]]:
        """Placeholder -> the ids that can stand in for it, newest first."""
        client = self.client()
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["attributes.start_time DESC"])
        lm = [r.info.run_id for r in runs if r.data.tags.get("harness.role") != "sweep" and r.data.params.get("task.kind", "lm") != "classify"]
        # the README's sweep parent is the quick start's (lr_sweep): a language model, which `generate` can sample
        lr_sweep = {e.experiment_id for e in client.search_experiments() if e.name == "lr_sweep"}
        parents = [r.info.run_id for r in runs if r.data.tags.get("harness.role") == "sweep" and r.info.experiment_id in lr_sweep]
        # the README asks a finetuned run a question: an instruction-tuned one
        tuned = [r.info.run_id for r in runs if r.data.tags.get("harness.init_from") and r.data.params.get("task.kind") == "instruct"]
        return {"<run_id>": lm, "<sweep_parent_run_id>": parents, "<finetuned_run_id>": tuned, "<your_text_file>": [str(self.text)]}

    def killed_run(self) -> str:
        """A run killed (SIGKILL) after its first step: what `harness resume <run_id>` is for."""
        before = set(self.ids()["<run_id>"])
        args = [sys.executable, "-m", "harness", "run", "experiments/names.yaml", "-q"]
        done = subprocess.run(args, cwd=self.dir, env={**self.env, "HARNESS_KILL_AT": "step:1"}, capture_output=True, text=True, timeout=300)
        assert done.returncode == -signal.SIGKILL, done.stderr
        [new] = set(self.ids()["<run_id>"]) - before
        return new

    def fill(self, command: str) -> str:
        if "mlruns/lr_sweep/<run_id>" in command:  # a checkpoint file of the quick start's sweep: one of its trials
            client = self.client()
            [exp] = [e.experiment_id for e in client.search_experiments() if e.name == "lr_sweep"]
            trial = next(r.info.run_id for r in client.search_runs([exp]) if r.data.tags.get("harness.role") == "trial")
            command = command.replace("mlruns/lr_sweep/<run_id>", f"mlruns/lr_sweep/{trial}")
        if command.startswith("harness resume") and "<run_id>" in command:
            command = command.replace("<run_id>", self.killed_run(), 1)
        ids = self.ids()
        for placeholder, candidates in ids.items():
            i = 0
            while placeholder in command:
                assert candidates, f"no run can stand in for {placeholder} in: {command}"
                command = command.replace(placeholder, candidates[i % len(candidates)], 1)
                i += 1
        assert "<" not in command or "--prompt" in command, f"an unknown placeholder in: {command}"
        return command

    def run(self, command: str) -> subprocess.CompletedProcess:
        args = self._glob(shlex.split(command))
        if args[0] == "harness":
            args = [sys.executable, "-m", "harness", *args[1:]]
        return subprocess.run(args, cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=600)

    def _glob(self, args: list[str]) -> list[str]:
        """What the shell does with a pattern such as experiments/*.yaml (sorted, relative to the project)."""
        out: list[str] = []
        for arg in args:
            matches = sorted(str(p.relative_to(self.dir)) for p in self.dir.glob(arg)) if "*" in arg else []
            out += matches or [arg]
        return out

    def serve(self, command: str) -> str:
        """Start a server command, wait until it says it is ready, stop it with Ctrl-C. It must have come up (not
        ended first), stop within a minute with exit 0, and leave nothing listening on its port."""
        from harness.serve import port_free

        args = shlex.split(command)
        if args[0] == "harness":
            args = [sys.executable, "-m", "harness", *args[1:]]
        port = int(args[args.index("--port") + 1]) if "--port" in args else 5000
        env = {k: v for k, v in self.env.items() if k != "PYTHONWARNINGS"}  # a third-party server: its own warnings are not ours
        proc = subprocess.Popen(args, cwd=self.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        lines: list[str] = []
        ready = stopped = False
        try:
            deadline = time.monotonic() + 180
            for line in proc.stdout:  # type: ignore[union-attr]
                lines.append(line)
                # harness ui says "ready" once its server answers; mlflow ui only has uvicorn's line
                if "ready: open" in line or (args[0] == "mlflow" and "Uvicorn running" in line):
                    ready = True
                    break
                assert time.monotonic() < deadline, "".join(lines)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                    stopped = True
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
        out = "".join(lines)
        assert ready, f"{command} ended before it was ready (exit {proc.returncode}):\n{out}"
        assert stopped and proc.returncode == 0, f"{command} did not stop cleanly on Ctrl-C within 60 s (exit {proc.returncode})"
        deadline = time.monotonic() + 30
        while not port_free("127.0.0.1", port):  # its workers end a moment after it
            assert time.monotonic() < deadline, f"{command}: something still listens on port {port} after it stopped"
            time.sleep(0.1)
        return out


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 60 commands, each a process of its own: 5 minutes on 2 quiet cores, 15 on busy ones
def test_every_readme_command_runs_as_written(tmp_path):
    project = _Project(tmp_path)
    ran = 0
    for block, command in _commands():
        if _skip_reason(command):
            continue
        command = project.fill(command)
        if command.startswith(SERVERS) and "--dry-run" not in command:
            out = project.serve(command)
            assert "Traceback" not in out, out
            ran += 1
            continue
        result = project.run(command)
        code, message = next((v for k, v in EXPECTED_EXIT.items() if command.startswith(k)), (0, ""))
        assert result.returncode == code, f"block {block}: {command}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert message in result.stdout + result.stderr, f"block {block}: {command}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        ran += 1
    assert ran >= 20

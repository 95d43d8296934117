"""experiments.zoo's process handling: a stopped zoo leaves no reconstruction running."""

import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_zoo_stops_its_child(tmp_path, how):
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent = ("import sys; from experiments import zoo; "
              f"sys.exit(zoo.run_child([sys.executable, '-c', {child!r}], open({str(tmp_path / 'log')!r}, 'w')))")
    zoo = subprocess.Popen([sys.executable, "-c", parent], cwd=os.path.dirname(os.path.dirname(__file__)))
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    zoo.send_signal(how)
    zoo.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        try:
            with open(f"/proc/{child_pid}/stat") as stat:  # a zombie left for init to reap is gone too
                if stat.read().split(")")[-1].split()[0] == "Z":
                    return
        except FileNotFoundError:  # reaped between the two looks
            return
        time.sleep(0.1)
    os.kill(child_pid, signal.SIGKILL)
    pytest.fail(f"the zoo's child {child_pid} outlived the zoo ({how.name})")


def test_a_mistyped_member_is_one_line_before_anything_is_made(tmp_path):
    p = subprocess.run([sys.executable, "-m", "experiments.zoo", "--members=blob:1", f"--workdir={tmp_path / 'zoo'}"],
                       cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: --members: 'blob:1' is not NAME:SEED with NAME in compact")
    assert not (tmp_path / "zoo").exists()

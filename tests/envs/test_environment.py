"""make_env's process-wide settings: MuJoCo's warnings go through Python's warnings, once per text."""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mujoco")


def _run(code: str, *flags: str) -> str:
    argv = [sys.executable, *flags, "-c", textwrap.dedent(code)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


def test_a_mujoco_warning_repeated_per_environment_is_shown_once():
    out = _run(
        """
        import mujoco
        from flowrl.envs import make_env
        for _ in range(3):
            make_env("halfcheetah").close()  # under mujoco 4 its model compiler warns about settotalmass
        handler = mujoco.get_mju_user_warning()
        assert handler is not None, "no MuJoCo warning handler after make_env"
        handler("a test warning"); handler("a test warning"); handler("another test warning")
        """
    )
    assert out.count("MuJoCo: a test warning") == 1, out
    assert out.count("MuJoCo: another test warning") == 1, out
    assert out.count("settotalmass") <= 1, out


def test_a_users_mujoco_warning_handler_is_kept():
    out = _run(
        """
        import mujoco
        from flowrl.envs import make_env
        def mine(message):
            print("mine:", message)
        mujoco.set_mju_user_warning(mine)
        make_env("hopper").close()
        assert mujoco.get_mju_user_warning() is mine
        mujoco.get_mju_user_warning()("kept")
        """
    )
    assert "mine: kept" in out, out


def test_warnings_as_errors_do_not_abort_inside_mujoco():
    # an exception raised in MuJoCo's warning callback would terminate the process
    out = _run(
        """
        import mujoco
        from flowrl.envs import make_env
        make_env("hopper").close()
        mujoco.get_mju_user_warning()("made an error by -W error")
        print("alive")
        """,
        "-W",
        "error",
    )
    assert "alive" in out and "MuJoCo warning: made an error by -W error" in out, out

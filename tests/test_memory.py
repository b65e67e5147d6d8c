"""keep_freed_memory: glibc malloc set to keep freed blocks (process-wide), with an opt-out."""

import os
import subprocess
import sys

import pytest

CODE = "from visionsae.memory import keep_freed_memory as k; print(k(), k())"


def _run(env_value):
    env = {k: v for k, v in os.environ.items() if k != "VISIONSAE_KEEP_FREED_MEMORY"}
    if env_value is not None:
        env["VISIONSAE_KEEP_FREED_MEMORY"] = env_value
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_set_once_on_glibc_and_the_opt_out_is_honoured():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert _run(None) == ["True", "True"]  # in effect, and asking again is harmless
    assert _run("0") == ["False", "False"]

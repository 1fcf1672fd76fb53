"""Run by tests/test_atomic_temps.py: SynthScenes generation that SIGKILLs itself right after
its first split is written, leaving its temporary folder behind as a killed run does.

Usage: python -m tests.kill_generation_script ROOT
"""

from __future__ import annotations

import os
import signal
import sys

from datamodules.synthetic import generation
from datamodules.synthetic.options import SyntheticOptions

OPTIONS = SyntheticOptions(n_train=6, n_val=2, n_test=4)


def main() -> None:
    write_split = generation.write_split

    def write_then_die(*args, **kwargs):
        write_split(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    generation.write_split = write_then_die
    generation.generate(OPTIONS, sys.argv[1], workers=1)


if __name__ == "__main__":
    main()

"""Helpers for tests that run main.py: as a program with models.create replaced by a test module's tiny network,
or in the test's own process."""
import os

import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_driver(test_module):
    """Source of a script that runs main.main() with models.create = <test_module>.tiny (also in the workers that
    -nGPU spawns, which import the script)."""
    return f'''
import sys
sys.path.insert(0, {ROOT!r})
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import models
from {test_module} import tiny
models.create = tiny
import main
if __name__ == '__main__':
    main.main()
'''


def run_main(argv, capsys):
    """main.main in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err

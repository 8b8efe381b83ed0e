"""Run several `python -m components.stages` command lines in ONE torchrun launch (test time: one process start
and one process group for the DMD2 and the CTM comparison of test_distributed.py, instead of a launch each).

    torchrun --standalone --nproc_per_node 2 tests/components/ddp_stages.py '<json list of argv lists>'

Each stage joins the launcher's process group as it would alone (components.distributed.init_from_env); the
group is kept between the stages (a stage's shutdown is deferred to the end) rather than torn down and
joined again on the same rendezvous."""
import json
import sys

import components.distributed as distributed
from components import stages


def main() -> int:
    shutdown, distributed.shutdown = distributed.shutdown, lambda: None
    try:
        for argv in json.loads(sys.argv[1]):
            rc = stages.main(argv)
            if rc:
                return rc
        return 0
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())

"""Run the finetune stage as one process of a data-parallel job, for test_distributed.py.

    torchrun --nproc_per_node 2 tests/ddp_worker.py WORKDIR

Each rank runs in its own copy of the work tree (WORKDIR/rank<N>), so that whatever a rank
writes shows up in its own directory, and records a digest of its trained LoRA weights in
WORKDIR/lora-rank<N>.sha256 before the stage frees the model.
"""

import hashlib
import os
import sys
from pathlib import Path

from core import distributed
from core.models.base import BaseUnslothModel
from stages import finetune, run


def record_lora_digest(workdir: Path):
    free = BaseUnslothModel.cleanup_model

    def cleanup_model(self):
        digest = hashlib.sha256()
        for name, param in sorted(self.model.named_parameters()):
            if "lora_" in name:
                digest.update(name.encode())
                digest.update(param.detach().float().cpu().numpy().tobytes())
        (workdir / f"lora-rank{distributed.rank()}.sha256").write_text(digest.hexdigest())
        free(self)

    BaseUnslothModel.cleanup_model = cleanup_model


if __name__ == "__main__":
    workdir = Path(sys.argv[1]).resolve()
    record_lora_digest(workdir)
    os.chdir(workdir / f"rank{distributed.rank()}")
    run(finetune.main)

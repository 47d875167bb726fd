"""Training with optax, split by concept:

* `jcnn.train.state`: `TrainState` (params, model state, optimizer state, step, key) and
  `init_state`.
* `jcnn.train.steps`: the jitted train and eval steps (`make_train_step`, `make_eval_step`),
  their placement on a ``"data"`` device mesh, `evaluate`, the ``precision=`` policy, and the
  training recipe (``augment=``, ``label_smoothing=``, ``compute_dtype="bfloat16"``).
* `jcnn.train.checkpoint`: checkpoints through orbax-checkpoint, with checksums of every array
  and of the metadata, verified on load (`save_checkpoint`, `load_checkpoint`).
* `jcnn.train.identity`: the run's identity stored with each checkpoint, and the resume check.
* `jcnn.train.rundir`, `jcnn.train.metrics`, `jcnn.train.output`: the output folder (one run at
  a time, probed before training, atomic writes) and the metric files rewritten from the
  checkpoint's history.
* `jcnn.train.distributed`: several processes (one per host) in one mesh through
  ``jax.distributed`` (`jcnn.train.distributed.initialize`, first thing in every process), and
  each process's rows of a global batch.
* `jcnn.train.fit`: `fit`, the orchestration of all of the above.

Models are per-example `jcnn.layers.Layer` s mapping one image ``(h, w, c)`` to logits
``(num_classes,)``; the steps batch them with `jcnn.layers.batched`.
"""

from jcnn.train.checkpoint import (
    CHECKPOINT_DIR,
    MID_EPOCH_DIR,
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    load_checkpoint,
    save_checkpoint,
)
from jcnn.train.fit import FitResult, NonFiniteLossError, fit
from jcnn.train.identity import RunMismatchError, run_identity
from jcnn.train.metrics import CSV_FIELDS, METRICS_CSV, METRICS_JSON
from jcnn.train.rundir import LOCK_NAME, RunLockedError
from jcnn.train.state import TrainState, init_state
from jcnn.train.steps import (
    PRECISIONS,
    EvalStep,
    TrainStep,
    evaluate,
    make_eval_step,
    make_mesh,
    make_train_step,
    xla_cpu_ynn_off,
)

#: The name of the checkpoint folder inside ``out_dir`` (was the single file
#: ``checkpoint.msgpack`` before the orbax checkpoints).
CHECKPOINT_NAME = CHECKPOINT_DIR

__all__ = [
    "TrainState",
    "FitResult",
    "NonFiniteLossError",
    "TrainStep",
    "EvalStep",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "RunMismatchError",
    "RunLockedError",
    "CHECKPOINT_NAME",
    "CHECKPOINT_DIR",
    "MID_EPOCH_DIR",
    "LOCK_NAME",
    "METRICS_JSON",
    "METRICS_CSV",
    "CSV_FIELDS",
    "PRECISIONS",
    "init_state",
    "make_mesh",
    "make_train_step",
    "make_eval_step",
    "xla_cpu_ynn_off",
    "evaluate",
    "fit",
    "run_identity",
    "save_checkpoint",
    "load_checkpoint",
]

"""Jobs: what `main.py` runs, chosen by `config.job`; each is a module with `run(config, workdir)`.

  pretrain     self-supervised pretraining with any method (the generic trainer)
  knn_eval     weighted kNN on frozen features of a checkpoint's encoder
  linear_eval  linear probe on frozen features (L-BFGS, or SGD on augmented crops)
  finetune     supervised fine-tuning of the encoder (few labels, frozen stages, scratch)
  export       the encoder as portable msgpack + JSON and/or a torchvision state_dict
  compare      one Markdown table and one chart of finished runs' evaluations

A new job is a new module here plus one line below. Every job that trains
(segmentation, domain adaptation, multi-task) runs its jitted step on the one
training loop, `sslx.core.loop.Loop`, with a `TrainState`
(`sslx.core.train_state`): checkpoints, exact resume, preemption and the
non-finite guard come with it.
"""

from sslx.registry import Registry

# One line each, for `python main.py --help` (sslx/jobs/usage.py).
SUMMARIES = {
    "pretrain": "self-supervised pretraining with any method (the generic trainer)",
    "knn_eval": "weighted kNN on frozen features of a checkpoint's encoder",
    "linear_eval": "linear probe on frozen features (L-BFGS, or SGD on augmented crops)",
    "finetune": "fine-tuning of the encoder on labels (few labels, frozen stages, scratch)",
    "export": "the encoder as portable msgpack + JSON and/or a torchvision state_dict",
    "compare": "one Markdown table and one chart of finished runs' evaluations",
}

JOBS = Registry("job", "config.job", {
    "pretrain": "sslx.jobs.pretrain:run",
    "knn_eval": "sslx.jobs.knn_eval:run",
    "linear_eval": "sslx.jobs.linear_eval:run",
    "finetune": "sslx.jobs.finetune:run",
    "export": "sslx.jobs.export:run",
    "compare": "sslx.jobs.compare:run",
})

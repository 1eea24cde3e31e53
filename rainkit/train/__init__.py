"""Training: one trainer base (`base`: loop, checkpoints, exact resume, log, curves, stopping, DDP) and its
trainers, SAPNet's (`sapnet`, with `config` and `data`) and TPSeNCE's (`tpsence`, with `tpsence_config`,
`tpsence_objective` and `unpaired_data`); single process or torchrun DDP."""

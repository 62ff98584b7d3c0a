"""Cluster submission for frozen_scale runs: SLURM, Ray Jobs, multi-node torchrun/deepspeed,
KubeRay manifests, and the per-GPU memory plan. Entry points: `frozen-scale submit` and
`frozen-scale plan` (launchers.cli). Every launcher runs the same training entry on every rank
(`launchers.commands.TRAIN_MODULE`); `launchers.local` runs it on this machine's CPUs or GPUs
(the demo, reproduce)."""

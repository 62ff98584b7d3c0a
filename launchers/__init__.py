"""Cluster submission for frozen_scale runs: SLURM, Ray Jobs, multi-node torchrun/deepspeed,
KubeRay manifests, and the per-GPU memory plan. Entry points: `frozen-scale submit` and
`frozen-scale plan` (launchers.cli)."""

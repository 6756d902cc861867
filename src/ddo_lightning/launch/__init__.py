"""Launchers: job scripts that run ``ddo fit`` on a cluster (``ddo slurm``: ``launch/slurm.py``).

Standard library only (plus ``ddo_lightning`` submodules): rendering a job script needs neither
Lightning nor torch.distributed; the training those scripts start uses them.
"""

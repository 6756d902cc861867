"""Launchers: job scripts that run ``ddo fit`` on a cluster (``ddo slurm``: ``launch/slurm.py``).

Rendering a job script is standard library only; the check before submission (``launch/config_check.py``,
imported when ``ddo slurm`` runs it) builds the run with Lightning, as ``ddo fit`` would, without weights.
"""

"""``python -m mme3dr``: the command line, also as ``torchrun --nproc_per_node N -m mme3dr evaluate ...``."""

from mme3dr.cli import app

app(prog_name="mme3dr")

"""``python -m netslim ...`` (also ``torchrun --nproc-per-node N -m netslim compress ...``): the CLI."""

from netslim.cli import main

main()

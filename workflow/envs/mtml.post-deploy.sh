#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment, in the working directory (the repository
# root): install mtml with the versions scripts/setup.sh pins.
set -euo pipefail
python -m pip install -q -c constraints.txt -e .

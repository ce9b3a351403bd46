"""``python -m fastfvae ...`` (also ``torchrun ... -m fastfvae train ...``): the fastfvae command."""
import sys

from fastfvae.cli import main

sys.exit(main())

import sys

from himari_ray.cli import main

sys.exit(main())

"""Entry point: `python appliance.py serve` is the same as `rt-appliance serve`."""
import sys

from rt.cli import main

if __name__ == "__main__":
    sys.exit(main())

import argparse
import sys

from webhook import main

parser = argparse.ArgumentParser(prog="python -m webhook", description=main.__doc__)
main.add_arguments(parser)
sys.exit(main.run(parser.parse_args()))

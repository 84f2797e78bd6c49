"""Decode from a trained run: python generate.py ckpt=<run dir or .ckpt> decoding=beam prompt="def main("."""

from lmlab.cli.generate import main

if __name__ == "__main__":
    main()

"""Train a causal LM: python train.py [group=option ...] [key=value ...]  (see README.md)."""

from lmlab.cli.train import main

if __name__ == "__main__":
    main()

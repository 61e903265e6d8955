"""`python -m harness.train`: see `harness.cli.train`."""
if __name__ == '__main__':
    import sys

    from harness.cli import launch
    sys.exit(launch('train'))

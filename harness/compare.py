"""`python -m harness.compare`: see `harness.cli.compare`."""
if __name__ == '__main__':
    import sys

    from harness.cli import launch
    sys.exit(launch('compare'))

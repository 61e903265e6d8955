"""`python -m harness.migrate`: see `harness.cli.migrate`."""
if __name__ == '__main__':
    import sys

    from harness.cli import launch
    sys.exit(launch('migrate'))

"""`python -m harness.scale_out`: see `harness.cli.scale_out`."""
if __name__ == '__main__':  # worker processes are spawned: they import this module without running it
    import sys

    from harness.cli import launch
    sys.exit(launch('scale_out'))

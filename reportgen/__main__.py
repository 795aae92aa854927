"""`python -m reportgen`."""

from reportgen.cli import entry

if __name__ == "__main__":  # the figure store's worker processes import this module again
    entry()

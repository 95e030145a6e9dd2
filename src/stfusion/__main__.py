"""`python -m stfusion` runs the command-line interface."""

from stfusion.cli import main

if __name__ == "__main__":
    main()

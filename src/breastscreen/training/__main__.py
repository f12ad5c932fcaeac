"""``python -m breastscreen.training KIND ...`` = ``breastscreen train KIND ...`` (handy under torchrun)."""

from breastscreen.training.cli import main

if __name__ == "__main__":
    main()

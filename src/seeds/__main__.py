"""`python -m src.seeds`: see `src.seeds.experiments`."""

from src.seeds.experiments import main

if __name__ == "__main__":
    main()

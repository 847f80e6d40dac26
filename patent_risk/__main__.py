"""`python -m patent_risk ...` is `patent-risk ...`."""
from patent_risk.cli.main import main

if __name__ == "__main__":
    main(prog_name="patent-risk")

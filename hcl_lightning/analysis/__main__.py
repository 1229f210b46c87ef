"""``python -m hcl_lightning.analysis ...``: the same as ``hcl-analyze``."""

from hcl_lightning.analysis.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

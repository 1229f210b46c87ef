"""``python -m hcl_lightning`` runs ``hcl-train`` (see :mod:`hcl_lightning.train`)."""

from hcl_lightning.train import main

if __name__ == "__main__":
    main()

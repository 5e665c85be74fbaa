"""``python -m aimc`` (also ``torchrun -m aimc ...``)."""

from aimc.cli import main

raise SystemExit(main())

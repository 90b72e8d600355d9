"""``python -m clipasso_pl.bench [key=value ...]``: the same as ``clipasso-pl bench``."""

from .run import main

raise SystemExit(main())

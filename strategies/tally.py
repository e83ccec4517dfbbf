"""The prototype round's running totals (``PrototypeTally``): exact per-class feature sums and
counts, added reply by reply and never kept."""

from __future__ import annotations

import numpy as np

from strategies.aggregation import EXACT_DTYPES, ExactSum

# Counts up to this times a float32 mean are exact in float64 (24 + 29 = 53 bits).
_EXACT_COUNT = 1 << 29


class PrototypeTally:
    """The prototype round's running totals: Σ_k S_{k,c} (exact, ``ExactSum``), Σ_k n_{k,c}
    (int64) and the number of clients added.

    Replies are added as they arrive and never kept; as the sum is exact, ``means()`` has
    the same bits whatever order they came in. ``dim`` None: a counts-only round (no sums).
    """

    def __init__(self, num_classes: int, dim: int | None = None) -> None:
        if num_classes < 1 or (dim is not None and dim < 1):
            raise ValueError(f"num_classes = {num_classes} and dim = {dim} must be >= 1")
        self.num_classes = int(num_classes)
        self.dim = None if dim is None else int(dim)
        self._sums = None if dim is None else ExactSum((self.num_classes, int(dim)))
        self._counts = np.zeros(self.num_classes, dtype=np.int64)
        self.clients = 0

    @property
    def counts(self) -> np.ndarray:
        """Σ_k n_{k,c} (int64, a copy)."""
        return np.array(self._counts, dtype=np.int64)

    def _checked_counts(self, counts: np.ndarray) -> np.ndarray:
        n = np.asarray(counts)
        if n.shape != (self.num_classes,) or not np.issubdtype(n.dtype, np.integer):
            raise ValueError(
                f"counts of dtype {n.dtype} and shape {n.shape}: expected "
                f"{self.num_classes} integers"
            )
        if (n < 0).any():
            raise ValueError(f"counts must be >= 0, got {n.tolist()}")
        return n.astype(np.int64)

    def add(self, sums: np.ndarray | None, counts: np.ndarray) -> None:
        """One client's feature sums (C, D) (None for a counts-only tally; float64 sums are
        rounded to float32 first) and counts (C,): all checked first, so that a refused one
        (ValueError) changes nothing."""
        n = self._checked_counts(counts)
        self._check_sums_given(sums, "each client's")
        if self._sums is not None:
            values = np.asarray(sums)
            if values.dtype == np.float64:
                # Rounded to float32 (the prototypes' dtype) so that the work and memory a
                # reply costs stay bounded whatever a node sends: a float32 value spans at
                # most 9 limbs, a float64 one up to 66.
                with np.errstate(over="ignore"):
                    values = values.astype(np.float32)
            self._sums.add_checked(self._sums.check(values))
        self._counts += n
        self.clients += 1

    def _check_sums_given(self, sums: np.ndarray | None, whose: str) -> None:
        """Sums exactly when this tally keeps them (not a counts-only one)."""
        if (sums is None) != (self._sums is None):
            raise ValueError(
                "a counts-only tally takes no sums"
                if self._sums is None
                else f"this tally needs {whose} feature sums"
            )

    def add_total(self, sums: np.ndarray | None, counts: np.ndarray, clients: int) -> None:
        """The totals of ``clients`` clients at once (a secure aggregation's result, which
        no client's own values reach): sums (C, D) float64 kept as they are, counts (C,)."""
        n = self._checked_counts(counts)
        if clients < 1:
            raise ValueError(f"clients = {clients} must be >= 1")
        self._check_sums_given(sums, "the clients'")
        if self._sums is not None:
            self._sums.add_checked(self._sums.check(np.asarray(sums, dtype=np.float64)))
        self._counts += n
        self.clients += clients

    def add_means(self, means: np.ndarray, counts: np.ndarray) -> None:
        """An earlier result: μ_c n_c for each class, exactly (μ float32 values: the
        state's; counts split below 2^29 so that every product is exact). Not a client."""
        if self._sums is None:
            raise ValueError("a counts-only tally takes no means")
        n = self._checked_counts(counts)
        mu = np.asarray(means)
        if mu.shape != (self.num_classes, self.dim):
            raise ValueError(
                f"means have shape {mu.shape}, expected {(self.num_classes, self.dim)}"
            )
        if mu.dtype not in EXACT_DTYPES:
            raise ValueError(f"means have dtype {mu.dtype}; expected float32 values")
        with np.errstate(over="ignore", invalid="ignore"):
            single = mu.astype(np.float32)
        if mu.dtype == np.float64 and not np.array_equal(single, mu):
            raise ValueError(
                "means are not float32 values: mean x count would not be exact in float64"
            )
        if (n >= _EXACT_COUNT * _EXACT_COUNT).any():
            raise ValueError(f"counts must be < 2^58 to fold exactly, got {int(n.max())}")
        mu64 = single.astype(np.float64)
        self._sums.check(mu64)
        high, low = n // _EXACT_COUNT, n % _EXACT_COUNT
        self._sums.add_checked(mu64 * low[:, None])
        if high.any():
            self._sums.add_checked(mu64 * (high * _EXACT_COUNT)[:, None].astype(np.float64))
        self._counts += n

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """μ_c = Σ_k S_{k,c} / Σ_k n_{k,c} as float32 (0 where no client holds c), and
        Σ_k n_{k,c} as int64."""
        if self._sums is None:
            raise ValueError("a counts-only tally has no sums to average")
        total = self._sums.result()
        means = np.zeros_like(total)
        held = self._counts > 0
        means[held] = total[held] / self._counts[held, None]
        return means.astype(np.float32), self.counts

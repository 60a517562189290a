"""The card-payment simulator of the Fraud Detection Handbook, as an engine input stream.

A re-implementation of the transaction data simulator of "Reproducible Machine Learning
for Credit Card Fraud Detection - Practical Handbook" (Le Borgne, Siblini, Lebichot,
Bontempi), chapter 3, that draws the same random numbers in the same order (numpy's
legacy ``RandomState`` and Python's ``random``), so that ``--seed 0`` reproduces the
handbook's dataset:

- customers: ``RandomState(0)``; per customer x, y ~ U(0, 100), mean amount ~ U(5, 100),
  std = mean / 2, mean transactions per day ~ U(0, 4);
- terminals: ``RandomState(1)``; x, y ~ U(0, 100); a customer uses the terminals at a
  Euclidean distance < r (5) from it, chosen uniformly with ``random.choice``;
- transactions: customer ``c`` seeds ``RandomState(c)`` and ``random.seed(c)``; each day a
  Poisson(mean per day) count; a time ``int(N(43200, 20000))`` kept only inside the day;
  an amount ``N(mean, std)``, redrawn as ``U(0, 2 mean)`` when negative, rounded to cents;
- frauds: (1) every amount > 220; (2) for each day ``d`` before the last one, the two
  terminals ``RandomState(d).permutation(n_terminals)[:2]`` are compromised and all their
  transactions on days ``[d, d + 28)`` are frauds; (3) for each such day the three customers
  ``RandomState(d).permutation(n_customers)[:3]`` are compromised and ``random.seed(d);
  random.sample`` picks a third of their transactions on days ``[d, d + 14)``, whose amount
  is multiplied by 5 and which become frauds. Later scenarios overwrite the label of
  earlier ones, as in the handbook.

Transactions are ordered by time (a stable sort: same-second ties keep customer order;
the handbook's unstable pandas sort may order such ties differently) and numbered from 0,
which gives ``TRANSACTION_ID``. Another ``--seed`` S shifts every seed (profiles S,
terminals S + 1, customers and days by S * 1,000,003).

Output: the engine's JSONL input (``.gz`` compresses), transactions as
``card_payment`` at terminal ``counterparty_id`` and, exactly ``--feedback-delay-days``
(7) days after each, a ``fraud``/``legit`` feedback event; sorted by time, a transaction
before a feedback at the same time. ``--truth-out`` writes the labels as CSV.

    python -m bench.cardsim --customers 5000 --terminals 10000 --days 183 --seed 0 \\
        --out cards.jsonl.gz --truth-out truth.csv
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DAY_S = 86_400
SEED_STRIDE = 1_000_003
FRAUD_AMOUNT = 220.0
TERMINAL_DAYS = 28
CUSTOMER_DAYS = 14
SCENARIO_NAMES = {0: "legit", 1: "amount>220", 2: "compromised terminal", 3: "compromised card"}


@dataclass(frozen=True)
class SimConfig:
    """Size and seed of a simulated dataset; the defaults are the handbook's."""

    customers: int = 5000
    terminals: int = 10000
    days: int = 183
    seed: int = 0
    radius: float = 5.0
    start_date: str = "2018-04-01"
    feedback_delay_s: int = 7 * DAY_S

    @property
    def start_epoch(self) -> int:
        """Unix time of midnight UTC on ``start_date``."""
        start = datetime.fromisoformat(self.start_date).replace(tzinfo=UTC)
        return int(start.timestamp())


@dataclass(frozen=True)
class CustomerProfiles:
    """One entry per customer, indexed by customer id."""

    x: FloatArray
    y: FloatArray
    mean_amount: FloatArray
    std_amount: FloatArray
    mean_nb_tx_per_day: FloatArray


@dataclass(frozen=True)
class Transactions:
    """All transactions in time order; the position is the transaction id."""

    seconds: IntArray  # since midnight of the first day
    day: IntArray
    customer: IntArray
    terminal: IntArray
    amount: FloatArray
    fraud: BoolArray
    scenario: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return int(self.seconds.size)


def customer_profiles(n_customers: int, seed: int = 0) -> CustomerProfiles:
    """Customer locations, spending and frequency: four uniforms per customer, in order.

    >>> p = customer_profiles(2)
    >>> round(float(p.x[0]), 4), round(float(p.mean_amount[0]), 4), round(float(p.std_amount[0]), 4)
    (54.8814, 62.2625, 31.1313)
    """
    u = np.random.RandomState(seed).random_sample((n_customers, 4))
    mean_amount = 5.0 + 95.0 * u[:, 2]
    return CustomerProfiles(x=100.0 * u[:, 0], y=100.0 * u[:, 1], mean_amount=mean_amount,
                            std_amount=mean_amount / 2, mean_nb_tx_per_day=4.0 * u[:, 3])


def terminal_locations(n_terminals: int, seed: int = 1) -> FloatArray:
    """Terminal (x, y) locations, shape ``(n_terminals, 2)``."""
    return 100.0 * np.random.RandomState(seed).random_sample((n_terminals, 2))


def terminals_within_radius(profiles: CustomerProfiles, terminals: FloatArray, radius: float,
                            block: int = 256) -> list[list[int]]:
    """For each customer, the ids of the terminals closer than ``radius``, increasing."""
    xy = np.column_stack([profiles.x, profiles.y])
    result: list[list[int]] = []
    for lo in range(0, xy.shape[0], block):
        diff = xy[lo:lo + block, None, :] - terminals[None, :, :]
        dist = np.sqrt(np.sum(np.square(diff), axis=2))
        result.extend(np.flatnonzero(row < radius).tolist() for row in dist)
    return result


def customer_transactions(seed: int, mean_amount: float, std_amount: float, mean_nb_tx: float,
                          available: list[int], days: int) -> tuple[list[int], list[float], list[int]]:
    """Seconds (since the first midnight), raw amounts and terminals of one customer.

    The random draws follow the handbook one by one; a customer without terminals in
    range makes no transaction.
    """
    if not available:
        return [], [], []
    rs = np.random.RandomState(seed)
    poisson, normal, uniform = rs.poisson, rs.normal, rs.uniform
    choice = random.Random(seed).choice
    seconds: list[int] = []
    amounts: list[float] = []
    terminals: list[int] = []
    for day in range(days):
        for _ in range(poisson(mean_nb_tx)):
            t = int(normal(DAY_S / 2, 20000))
            if 0 < t < DAY_S:
                amount = normal(mean_amount, std_amount)
                if amount < 0:
                    amount = uniform(0, mean_amount * 2)
                seconds.append(t + day * DAY_S)
                amounts.append(float(amount))
                terminals.append(choice(available))
    return seconds, amounts, terminals


def generate_transactions(config: SimConfig) -> Transactions:
    """The genuine transactions of every customer, in time order, without fraud yet."""
    profiles = customer_profiles(config.customers, config.seed)
    terminals = terminal_locations(config.terminals, config.seed + 1)
    available = terminals_within_radius(profiles, terminals, config.radius)
    offset = config.seed * SEED_STRIDE
    parts: list[tuple[list[int], list[float], list[int]]] = []
    counts: list[int] = []
    for cid in range(config.customers):
        part = customer_transactions(cid + offset, float(profiles.mean_amount[cid]),
                                     float(profiles.std_amount[cid]),
                                     float(profiles.mean_nb_tx_per_day[cid]), available[cid], config.days)
        parts.append(part)
        counts.append(len(part[0]))
    seconds = np.fromiter((s for p in parts for s in p[0]), dtype=np.int64, count=sum(counts))
    raw = np.fromiter((a for p in parts for a in p[1]), dtype=np.float64, count=seconds.size)
    amounts = np.asarray(np.round(raw, 2), dtype=np.float64)
    terminal = np.fromiter((t for p in parts for t in p[2]), dtype=np.int64, count=seconds.size)
    customer = np.repeat(np.arange(config.customers, dtype=np.int64), counts)
    order = np.argsort(seconds, kind="stable")
    n = seconds.size
    return Transactions(seconds=seconds[order], day=seconds[order] // DAY_S, customer=customer[order],
                        terminal=terminal[order], amount=amounts[order], fraud=np.zeros(n, dtype=bool),
                        scenario=np.zeros(n, dtype=np.int8))


def _index_by(keys: IntArray, n_keys: int) -> tuple[IntArray, IntArray]:
    """Transaction ids grouped by key (ids increasing within a key) and each key's start."""
    order = np.argsort(keys, kind="stable")
    starts = np.searchsorted(keys[order], np.arange(n_keys + 1))
    return order, starts


def _in_days(ids: IntArray, day: IntArray, first: int, n_days: int) -> IntArray:
    """The ids among ``ids`` whose day is in ``[first, first + n_days)``."""
    d = day[ids]
    return ids[(d >= first) & (d < first + n_days)]


def add_frauds(tx: Transactions, config: SimConfig) -> Transactions:
    """The three fraud scenarios of the handbook, applied in its order (labels overwrite)."""
    amount = tx.amount.copy()
    fraud = amount > FRAUD_AMOUNT
    scenario = np.where(fraud, 1, 0).astype(np.int8)
    if len(tx) == 0:
        return replace(tx, amount=amount, fraud=fraud, scenario=scenario)
    last_day = int(tx.day.max())
    offset = config.seed * SEED_STRIDE
    by_terminal, terminal_starts = _index_by(tx.terminal, config.terminals)
    for day in range(last_day):
        for term in np.random.RandomState(day + offset).permutation(config.terminals)[:2]:
            ids = _in_days(by_terminal[terminal_starts[term]:terminal_starts[term + 1]], tx.day, day,
                           TERMINAL_DAYS)
            fraud[ids] = True
            scenario[ids] = 2
    by_customer, customer_starts = _index_by(tx.customer, config.customers)
    for day in range(last_day):
        chosen = np.random.RandomState(day + offset).permutation(config.customers)[:3]
        ids = np.sort(np.concatenate([
            _in_days(by_customer[customer_starts[c]:customer_starts[c + 1]], tx.day, day, CUSTOMER_DAYS)
            for c in chosen]))
        picked = np.asarray(random.Random(day + offset).sample(ids.tolist(), k=ids.size // 3),
                            dtype=np.int64)
        amount[picked] = amount[picked] * 5
        fraud[picked] = True
        scenario[picked] = 3
    return replace(tx, amount=amount, fraud=fraud, scenario=scenario)


def simulate(config: SimConfig) -> Transactions:
    """The labelled dataset of ``config``."""
    return add_frauds(generate_transactions(config), config)


def _timestamps(epoch_seconds: IntArray) -> list[str]:
    """RFC 3339 UTC with milliseconds for integer Unix times."""
    stamps = np.datetime_as_string(epoch_seconds.astype("datetime64[s]").astype("datetime64[ms]"),
                                   unit="ms")
    return [f"{s}Z" for s in stamps.tolist()]


def event_order(tx: Transactions, delay_s: int) -> IntArray:
    """Positions in the merged stream: ``i < n`` is transaction ``i``, ``n + i`` its feedback.

    Sorted by time; a transaction comes before a feedback at the same second.
    """
    keys = np.concatenate([tx.seconds * 2, (tx.seconds + delay_s) * 2 + 1])
    return np.argsort(keys, kind="stable")


def _event_lines(tx: Transactions, config: SimConfig, chunk: int) -> Iterator[bytes]:
    """The JSONL stream in chunks of ``chunk`` events, already encoded."""
    n = len(tx)
    order = event_order(tx, config.feedback_delay_s)
    for lo in range(0, order.size, chunk):
        part = order[lo:lo + chunk]
        is_fb = part >= n
        ids = np.where(is_fb, part - n, part)
        delay = np.where(is_fb, config.feedback_delay_s, 0)
        stamps = _timestamps(config.start_epoch + tx.seconds[ids] + delay)
        lines: list[str] = []
        for fb, i, ts, cust, term, amount, fraud in zip(
                is_fb.tolist(), ids.tolist(), stamps, tx.customer[ids].tolist(), tx.terminal[ids].tolist(),
                tx.amount[ids].tolist(), tx.fraud[ids].tolist(), strict=True):
            if fb:
                label = "fraud" if fraud else "legit"
                lines.append(f'{{"kind":"feedback","event_id":"fb{i}","ts":"{ts}","customer_id":"cust{cust}",'
                             f'"label":"{label}","ref_event_id":"tx{i}"}}\n')
            else:
                lines.append(f'{{"kind":"transaction","event_id":"tx{i}","ts":"{ts}","customer_id":"cust{cust}",'
                             f'"counterparty_id":"term{term}","amount":{amount:.2f},'
                             f'"txn_type":"card_payment","channel":"pos"}}\n')
        yield "".join(lines).encode()


def _open_out(path: Path, compress: bool) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        return gzip.open(path, "wb", compresslevel=3)  # type: ignore[return-value]
    return path.open("wb")


def write_events(tx: Transactions, config: SimConfig, path: Path, chunk: int = 100_000) -> int:
    """Write the JSONL event stream (streamed, chunk by chunk); the number of events."""
    tmp = path.with_name(path.name + ".part")
    with _open_out(tmp, path.suffix == ".gz") as out:
        for block in _event_lines(tx, config, chunk):
            out.write(block)
    tmp.replace(path)
    return 2 * len(tx)


def write_truth(tx: Transactions, config: SimConfig, path: Path, chunk: int = 200_000) -> None:
    """Write ``event_id,customer_id,ts,day,is_fraud,scenario`` per transaction, by id."""
    tmp = path.with_name(path.name + ".part")
    with _open_out(tmp, path.suffix == ".gz") as out:
        out.write(b"event_id,customer_id,ts,day,is_fraud,scenario\n")
        for lo in range(0, len(tx), chunk):
            hi = min(lo + chunk, len(tx))
            stamps = _timestamps(config.start_epoch + tx.seconds[lo:hi])
            rows = [f"tx{i},cust{c},{ts},{d},{int(f)},{s}\n" for i, c, ts, d, f, s in zip(
                range(lo, hi), tx.customer[lo:hi].tolist(), stamps, tx.day[lo:hi].tolist(),
                tx.fraud[lo:hi].tolist(), tx.scenario[lo:hi].tolist(), strict=True)]
            out.write("".join(rows).encode())
    tmp.replace(path)


def summary(tx: Transactions) -> str:
    """One line: transactions, frauds and frauds per scenario."""
    counts = np.bincount(tx.scenario, minlength=4)
    share = float(tx.fraud.mean()) if len(tx) else 0.0
    parts = ", ".join(f"scenario {s} ({SCENARIO_NAMES[s]}): {counts[s]}" for s in (1, 2, 3))
    return f"{len(tx)} transactions, {int(tx.fraud.sum())} frauds ({share:.4%}); {parts}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.cardsim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SimConfig()
    parser.add_argument("--customers", type=int, default=defaults.customers)
    parser.add_argument("--terminals", type=int, default=defaults.terminals)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--radius", type=float, default=defaults.radius)
    parser.add_argument("--start-date", default=defaults.start_date, help="first day, YYYY-MM-DD (UTC)")
    parser.add_argument("--feedback-delay-days", type=float, default=7.0)
    parser.add_argument("--out", type=Path, required=True, help="events JSONL (.gz to compress)")
    parser.add_argument("--truth-out", type=Path, help="labels CSV (.gz to compress)")
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(customers=args.customers, terminals=args.terminals, days=args.days, seed=args.seed,
                     radius=args.radius, start_date=args.start_date,
                     feedback_delay_s=round(args.feedback_delay_days * DAY_S))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    started = time.perf_counter()
    tx = simulate(config)
    generated = time.perf_counter()
    n_events = write_events(tx, config, args.out)
    if args.truth_out is not None:
        write_truth(tx, config, args.truth_out)
    done = time.perf_counter()
    print(summary(tx))
    print(f"{n_events} events to {args.out} (generation {generated - started:.1f}s, "
          f"writing {done - generated:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
